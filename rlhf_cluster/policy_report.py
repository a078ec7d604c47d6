"""Stage-2 policies side by side (``jobs.compare`` on ``jobs.personalize`` runs): each group's mean ± 95 % CI
over seeds of what ``run_dir/eval.json`` reports per test split — true utility, win rate against the base
policy, and the share of rows given their user type's better answer — for all rows and contested ones,
with the world's ceilings (per-user optimum, best single answer) beneath. Pure functions on the JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rlhf_cluster.metrics import format_mean_ci, mean_ci95

POLICY_METRICS = {
    "true_utility": "true utility",
    "win_rate_vs_base": "win rate vs base",
    "personalized_share": "own type's answer",
}
POLICY_SUBSETS = ("all", "contested")


def is_policy_eval(ev: Mapping) -> bool:
    """Whether an eval.json is a jobs.personalize one (a policy's), not a reward model's (jobs.evaluate)."""
    splits = ev.get("splits")
    return isinstance(splits, Mapping) and "oracle_expected_utility" in (ev.get("ceilings") or {})


def policy_splits(evals: Sequence[Mapping]) -> list[str]:
    return list(dict.fromkeys(s for ev in evals for s in ev["splits"]))


def aggregate_policies(evals: Sequence[Mapping], splits: Sequence[str]) -> dict:
    """{split: {subset: {metric: {"mean", "ci95", "n_seeds", "values"}}}} over one group's runs."""
    out: dict = {}
    for split in splits:
        for subset in POLICY_SUBSETS:
            for metric in POLICY_METRICS:
                values = [((ev["splits"].get(split) or {}).get(subset) or {}).get(metric) for ev in evals]
                values = [v for v in values if v is not None]
                mean, ci = mean_ci95(values) if values else (None, None)
                stat = {"mean": mean, "ci95": ci, "n_seeds": len(values), "values": values}
                out.setdefault(split, {}).setdefault(subset, {})[metric] = stat
    return out


def policy_ceilings(ceilings: Mapping) -> dict:
    """The rows under the table: what a per-user optimal policy and the best single answer score."""
    kinds = len(ceilings.get("kinds") or []) or 2
    return {
        "per-user optimum": {"true_utility": ceilings["oracle_expected_utility"], "personalized_share": 1.0},
        "best single answer": {
            "true_utility": ceilings["best_single_expected_utility"],
            "personalized_share": 1.0 / kinds,
        },
    }


def policy_markdown(title: str, groups: Sequence[Mapping], splits: Sequence[str], ceilings: Mapping) -> str:
    """One table per split: a row per group (``label``, ``policy``: aggregate_policies), the ceilings beneath."""
    head = [f"{name} ({subset})" for subset in POLICY_SUBSETS for name in POLICY_METRICS.values()]
    lines = [f"# {title}", "", "mean ± 95 % CI (Student t) over seeds; true preferences of the generated world.", ""]
    for split in splits:
        lines += [f"## {split}", "", "| policy trained with | " + " | ".join(head) + " |"]
        lines.append("|---" * (len(head) + 1) + "|")
        for g in groups:
            stats = g["policy"][split]
            cells = [format_mean_ci(stats[s][m]) for s in POLICY_SUBSETS for m in POLICY_METRICS]
            lines.append(f"| {g['label']} | " + " | ".join(cells) + " |")
        for name, values in policy_ceilings(ceilings).items():
            cells = ["–" if m not in values else f"{values[m]:.3f}" for _ in POLICY_SUBSETS for m in POLICY_METRICS]
            lines.append(f"| *ceiling: {name}* | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Groups: " + "; ".join(f"{g['label']} = {', '.join(g['runs'])}" for g in groups))
    return "\n".join(lines) + "\n"

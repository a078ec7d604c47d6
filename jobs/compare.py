"""Evaluated runs side by side, seeds aggregated, with the dataset's analytic ceilings.

    python -m jobs.compare --runs '[runs/a, runs/b]' --out DIR
    python -m jobs.compare --runs 'runs/pets-*' --out DIR [--eval_file eval-personas.json]

Reads each run's eval.json (written by ``jobs.evaluate``; a run without one is an error that says to
run evaluate) and its config.yaml. Runs whose configs are equal except for the seed (and run_dir and
where they ran: ray / resources sections) form one group, labelled by ``rm.conditioning`` (plus a
top-level ``name`` when the config has one, plus the differing keys when two groups would share a
label). Each group gets mean ± 95 % CI over its seeds (``rlhf_cluster.metrics.mean_ci95``).

A jobs.plus run's ``evaluate/`` view also holds ``plus.yaml`` (PLUS_VIEW_FILE): the PLUS run's own config
and label. Such a run is grouped by that PlusConfig (the view's config.yaml points at each run's own trained
summarizer and lacks the PLUS settings) and labelled ``PLUS (<algorithm>[, frozen …])`` or its ``name``.

Writes DIR/compare.md (one table per split: rows = groups then the ceilings oracle, user-agnostic,
n-context Bayes; columns all / contested / agreed / worst-decile user), DIR/compare.json and
DIR/compare.png (grouped bars per split for ``plot_subset``, error bars = CI, ceilings as lines).

Stage-2 policies (``jobs.personalize`` runs, whose eval.json scores generated responses against the world's
true preferences) are compared the same way — grouped by config, labelled by the reward source (plus the
differing keys, e.g. policy.kl_coef) — in a table per split of true utility, win rate against the base
policy and the share of rows given their user type's answer (all / contested), with the per-user optimum
and the best single answer beneath (``rlhf_cluster.policy_report``; compare.md and compare.json, no plot).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from rlhf_cluster.cli import EXIT_USAGE, parse_config
from rlhf_cluster.config import CompareConfig, PlusConfig, TrainRMConfig
from rlhf_cluster.metrics import format_mean_ci, mean_ci95, summary_lines
from rlhf_cluster.policy_report import aggregate_policies, is_policy_eval, policy_markdown, policy_splits
from rlhf_cluster.runs import PLUS_VIEW_FILE, expand_run_dirs

SUBSETS = ("all", "contested", "agreed")
# "ceiling:" in every name: a group conditioned on the oracle description is also labelled "oracle".
CEILINGS = {
    "oracle": "ceiling: oracle",
    "user_agnostic": "ceiling: user-agnostic",
    "bayes_n_context": "ceiling: n-context Bayes",
}
# Config keys that do not change what a run learns: where it ran, where it wrote, and the seed itself.
NOT_GROUPING = (
    "seed",
    "run_dir",
    "ray",
    "rank_resources",
    "rollout_resources",
    "deepspeed.backend",
    "checkpoint_every",
    "show",  # printing only
    # jobs.plus roles (PLUS_VIEW_FILE)
    "policy_resources",
    "rm_resources",
    "reference_resources",
    "critic_resources",
)


class CompareError(Exception):
    """An input the user must fix; the message names the run or pattern."""


@dataclasses.dataclass
class RunEval:
    dir: Path
    config: dict  # config.yaml as loaded (plain YAML: no model validation needed to group runs)
    eval: dict
    plus: dict | None = None  # a jobs.plus view's PLUS_VIEW_FILE: {"label", "config": the PlusConfig}

    @property
    def experiment(self) -> dict:
        """The config that defines what the run learned: a PLUS view's PlusConfig, else config.yaml."""
        return self.plus["config"] if self.plus else self.config


@dataclasses.dataclass
class Group:
    key: tuple
    runs: list[RunEval]
    label: str = ""

    @property
    def seeds(self) -> list:
        return [r.config.get("seed") for r in self.runs]


# ------------------------------------------------------------------------------------ inputs


def expand_runs(spec: list[str] | str) -> list[Path]:
    """Run directories from paths and glob patterns, in the order given (glob matches sorted)."""
    try:
        return expand_run_dirs(spec)
    except ValueError as err:
        raise CompareError(str(err)) from None


def load_run_eval(run_dir: Path, eval_file: str) -> RunEval:
    eval_path, cfg_path = run_dir / eval_file, run_dir / "config.yaml"
    if not eval_path.is_file():
        raise CompareError(f"{run_dir}: no {eval_file}; run `python -m jobs.evaluate --run {run_dir}` first")
    if not cfg_path.is_file():
        raise CompareError(f"{cfg_path}: not found; expected the config.yaml that jobs.train_rm writes")
    try:
        config, result = yaml.safe_load(cfg_path.read_text()) or {}, json.loads(eval_path.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise CompareError(f"{run_dir}: unreadable {cfg_path.name} or {eval_file}: {err}") from None
    return RunEval(run_dir, _with_defaults(config), result, _plus_view(run_dir))


def _plus_view(run_dir: Path) -> dict | None:
    """A jobs.plus view's PLUS_VIEW_FILE with its config's defaults filled in; None for other runs."""
    path = run_dir / PLUS_VIEW_FILE
    if not path.is_file():
        return None
    try:
        plus = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise CompareError(f"{path}: unreadable: {err}") from None
    if not isinstance(plus, dict) or not isinstance(plus.get("config"), dict):
        raise CompareError(f"{path}: expected a mapping with label and config (the PlusConfig), as jobs.plus writes")
    return {"label": plus.get("label"), "config": _with_defaults(plus["config"], PlusConfig)}


def _with_defaults(config: dict, model: type[BaseModel] = TrainRMConfig) -> dict:
    """The config with today's defaults filled in, so a field added since a run was made does not split groups."""
    try:
        return model.model_validate(config).model_dump(mode="json")
    except ValidationError:
        return config  # not a `model` (or an older incompatible one): compare it as written


# ---------------------------------------------------------------------------------- grouping


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def grouping_key(config: dict) -> tuple:
    """A named run's name; otherwise every config key except NOT_GROUPING, as a hashable sorted tuple."""
    if config.get("name"):
        return (("name", config["name"]),)
    flat = flatten(config)
    kept = {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in NOT_GROUPING)}
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in kept.items()))


def group_runs(runs: list[RunEval]) -> list[Group]:
    """Runs that differ only in seed (and placement) together, in order of first appearance."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        key = grouping_key(run.experiment)
        groups.setdefault(key, Group(key, [])).runs.append(run)
    out = list(groups.values())
    for g in out:
        run, cfg = g.runs[0], g.runs[0].experiment
        if cfg.get("name"):
            g.label = cfg["name"]
        elif run.plus and run.plus.get("label"):
            g.label = str(run.plus["label"])
        elif is_policy_eval(run.eval):  # a jobs.personalize run: its eval.json names the reward source
            g.label = str(run.eval.get("name") or "policy")
        else:
            g.label = str((cfg.get("rm") or {}).get("conditioning", "?"))
    _disambiguate(out)
    return out


def _disambiguate(groups: list[Group]) -> None:
    """Groups sharing a label get the keys on which they differ appended (at most three)."""
    by_label: dict[str, list[Group]] = {}
    for g in groups:
        by_label.setdefault(g.label, []).append(g)
    for same in (v for v in by_label.values() if len(v) > 1):
        keys = [dict(g.key) for g in same]
        differing = sorted({k for d in keys for k in d if any(o.get(k) != d.get(k) for o in keys)})
        for g, d in zip(same, keys):
            g.label += " (" + ", ".join(f"{k}={json.loads(d[k]) if k in d else '-'}" for k in differing[:3]) + ")"


# ------------------------------------------------------------------------------- aggregation


def aggregate(group: Group, splits: list[str]) -> dict:
    """{split: {subset|"worst_decile": {"mean", "ci95", "n_seeds", "values"}}} over the group's runs."""
    out = {}
    for split in splits:
        stats = {}
        for subset in (*SUBSETS, "worst_decile"):
            values = [_value(r.eval, split, subset) for r in group.runs]
            values = [v for v in values if v is not None]
            mean, ci = mean_ci95(values) if values else (None, None)
            stats[subset] = {"mean": mean, "ci95": ci, "n_seeds": len(values), "values": values}
        out[split] = stats
    return out


def _value(ev: dict, split: str, subset: str):
    if subset == "worst_decile":
        return ((ev.get("per_user") or {}).get(split) or {}).get("worst_decile")
    return ((ev.get("accuracy") or {}).get(split) or {}).get(subset)


def pick_ceilings(runs: list[RunEval]) -> dict | None:
    """The first run's ceilings; a notice names runs evaluated on data with other ceilings."""
    first = runs[0].eval.get("ceilings")
    other = [str(r.dir) for r in runs[1:] if r.eval.get("ceilings") != first]
    if other:
        print(f"notice: ceilings differ from {runs[0].dir}'s (other data?) in: {', '.join(other)}", file=sys.stderr)
    return first


def all_splits(runs: list[RunEval]) -> list[str]:
    return list(dict.fromkeys(s for r in runs for s in (r.eval.get("accuracy") or {})))


# ------------------------------------------------------------------------------------- report


def markdown(result: dict) -> str:
    lines = [
        f"# Comparison of {len(result['runs'])} runs ({result['eval_file']})",
        "",
        "mean ± 95 % CI (Student t) over seeds; ceilings are the dataset's analytic ones.",
        "",
    ]
    for split in result["splits"]:
        lines += [f"## {split}", "", "| | all | contested | agreed | worst-decile user |", "|---|---|---|---|---|"]
        for g in result["groups"]:
            s = g["accuracy"][split]
            cells = [format_mean_ci(s[k]) for k in (*SUBSETS, "worst_decile")]
            lines.append(f"| {g['label']} | " + " | ".join(cells) + " |")
        ceil = (result["ceilings"] or {}).get(split) or {}
        for key, name in CEILINGS.items() if ceil else []:
            vals = [(ceil.get(sub) or {}).get(key) for sub in SUBSETS]
            lines.append(f"| *{name}* | " + " | ".join("–" if v is None else f"{v:.3f}" for v in vals) + " | |")
        lines.append("")
    for g in result["groups"]:
        for split, rows in list((g.get("sample_summaries") or {}).items())[-1:]:  # the last split: often OOD
            lines += [f"Sample summaries of {g['label']} ({split}, {g['runs'][0]}):", "", *summary_lines(rows), ""]
    lines.append("Groups: " + "; ".join(f"{g['label']} = {', '.join(g['runs'])}" for g in result["groups"]))
    return "\n".join(lines) + "\n"


def plot(result: dict, subset: str, path: Path) -> None:
    """Grouped bars per split for one subset; error bars = CI; ceilings as lines across each split."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on clusters
    import matplotlib.pyplot as plt

    splits, groups = result["splits"], result["groups"]
    width = 0.8 / max(len(groups), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(splits) + 2.5), 4.5))
    for i, g in enumerate(groups):
        stats = [g["accuracy"][s][subset] for s in splits]
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(splits))]
        n = len(g["runs"])
        # Muted bar colours, so the dark ceiling lines drawn over them stay visible.
        bars = ax.bar(
            xs,
            [st["mean"] or 0.0 for st in stats],
            width * 0.9,
            color=plt.cm.Set2(i % 8),
            label=f"{g['label']} ({n} seed{'s' if n != 1 else ''})",
        )
        with_ci = [(x, st) for x, st in zip(xs, stats) if st["ci95"] is not None]
        if with_ci:  # a single seed has no CI: no error bar rather than a misleading zero-width one
            ax.errorbar(
                [x for x, _ in with_ci],
                [st["mean"] for _, st in with_ci],
                yerr=[st["ci95"] for _, st in with_ci],
                fmt="none",
                ecolor="0.2",
                capsize=3,
                lw=1,
            )
        for b, st in zip(bars, stats):
            if st["mean"] is not None:  # value at the foot of the bar, clear of error bars and ceilings
                ax.text(
                    b.get_x() + b.get_width() / 2,
                    0.015,
                    f"{st['mean']:.2f}",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color="black",
                )
    _plot_ceilings(ax, result.get("ceilings") or {}, splits, subset)
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":", label="chance")
    ax.set_xticks(range(len(splits)), [s.replace("_", " ") for s in splits])
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(f"pairwise accuracy ({subset} pairs)")
    ax.set_title(f"Reward-model accuracy on {subset} pairs: mean ± 95 % CI over seeds")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_ceilings(ax, ceilings: dict, splits: list[str], subset: str) -> None:
    # oracle drawn thick underneath, so a Bayes ceiling equal to it still shows as a line on top
    styles = {
        "oracle": ("black", "-", 3.0),
        "user_agnostic": ("#b2182b", "--", 1.6),
        "bayes_n_context": ("deepskyblue", "-.", 1.6),
    }
    for key, name in CEILINGS.items():
        color, ls, lw = styles[key]
        label = name  # only the first segment is labelled: the legend lists each ceiling once
        for j, split in enumerate(splits):
            value = ((ceilings.get(split) or {}).get(subset) or {}).get(key)
            if value is not None:
                ax.hlines(value, j - 0.45, j + 0.45, colors=color, linestyles=ls, lw=lw, label=label)
                label = None


# --------------------------------------------------------------------------------------- main


def compare(cfg: CompareConfig) -> dict:
    runs = [load_run_eval(d, cfg.eval_file) for d in expand_runs(cfg.runs)]
    policies = [is_policy_eval(r.eval) for r in runs]
    if any(policies):
        if not all(policies):
            mixed = [str(r.dir) for r, p in zip(runs, policies) if not p]
            raise CompareError(f"jobs.personalize runs mixed with reward-model evaluations ({', '.join(mixed)})")
        return compare_policies(cfg, runs)
    splits = cfg.splits or all_splits(runs)
    groups = group_runs(runs)
    result = {
        "eval_file": cfg.eval_file,
        "runs": [str(r.dir) for r in runs],
        "splits": splits,
        "groups": [
            {
                "label": g.label,
                "runs": [str(r.dir) for r in g.runs],
                "seeds": g.seeds,
                "accuracy": aggregate(g, splits),
                "sample_summaries": g.runs[0].eval.get("sample_summaries") or {},
            }
            for g in groups
        ],
        "ceilings": pick_ceilings(runs),
    }
    for g in result["groups"]:
        if len(set(g["seeds"])) < len(g["seeds"]):
            print(
                f"notice: group {g['label']!r} repeats a seed {g['seeds']}: those runs are not independent",
                file=sys.stderr,
            )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(result)
    (out / "compare.md").write_text(table)
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, cfg.plot_subset, out / "compare.png")
    print(table)
    print(f"wrote {out}/compare.md, compare.json, compare.png")
    return result


def compare_policies(cfg: CompareConfig, runs: list[RunEval]) -> dict:
    """jobs.personalize runs: rlhf_cluster.policy_report's table per split → DIR/compare.md, compare.json."""
    splits = cfg.splits or policy_splits([r.eval for r in runs])
    groups = [
        {
            "label": g.label,
            "runs": [str(r.dir) for r in g.runs],
            "seeds": g.seeds,
            "policy": aggregate_policies([r.eval for r in g.runs], splits),
        }
        for g in group_runs(runs)
    ]
    result = {"eval_file": cfg.eval_file, "runs": [str(r.dir) for r in runs], "splits": splits, "groups": groups}
    result["ceilings"] = pick_ceilings(runs)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    table = policy_markdown(f"Comparison of {len(runs)} policies", groups, splits, result["ceilings"])
    (out / "compare.md").write_text(table)
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table)
    print(f"wrote {out}/compare.md, compare.json")
    return result


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(CompareConfig, argv, prog="jobs.compare")
    try:
        return compare(cfg)
    except CompareError as err:
        print(f"jobs.compare: error: {err}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()

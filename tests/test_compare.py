"""`jobs.compare` over PLUS runs: the `evaluate/` view that jobs.plus writes must let compare group two
seeds of one PLUS configuration together and a differently configured PLUS run apart.

Pure: PLUS run dirs are laid out by ``jobs.plus.write_evaluate_view`` itself (no training, no Ray) with a
hand-written eval.json, as jobs.evaluate would leave it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from jobs import compare as compare_job
from jobs.plus import run_label, write_evaluate_view
from rlhf_cluster.config import PlusConfig, TrainRMConfig, merge_defaults


def plus_run(root: Path, dirname: str, seed: int = 0, contested: float = 0.6, **overrides) -> Path:
    """A finished PLUS run dir (config.yaml + evaluate/ view with an eval.json); returns the view."""
    run = root / dirname
    run.mkdir(parents=True)
    base = {
        "run_dir": str(run),
        "seed": seed,
        "data": {"dir": "runs/exp/pets/data"},
        "models": {"summarizer": "runs/exp/pets/models/summarizer", "reward_model": "runs/exp/pets/models/rm"},
    }
    cfg = PlusConfig.model_validate(merge_defaults(base, overrides))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    view = write_evaluate_view(cfg, run)
    acc = {"all": 0.8, "contested": contested, "agreed": 0.9, "n": 10, "n_contested": 5, "n_agreed": 5}
    (view / "eval.json").write_text(json.dumps({"accuracy": {"test_seen_users": acc}}))
    return view


def groups_of(views: list[Path]) -> dict[str, list]:
    runs = [compare_job.load_run_eval(v, "eval.json") for v in views]
    return {g.label: sorted(g.seeds) for g in compare_job.group_runs(runs)}


def test_plus_seeds_group_together_and_another_config_apart(tmp_path):
    views = [
        plus_run(tmp_path, "plus-s0", seed=0, contested=0.6),
        plus_run(tmp_path, "plus-s1", seed=1, contested=0.8),
        plus_run(tmp_path, "plus-kl-s0", seed=0, contested=0.5, policy={"kl_coef": 0.05}),
    ]
    out = tmp_path / "cmp"
    result = compare_job.main(["--runs", "[" + ", ".join(map(str, views)) + "]", "--out", str(out)])
    groups = {g["label"]: g for g in result["groups"]}
    assert set(groups) == {"PLUS (grpo) (policy.kl_coef=0.01)", "PLUS (grpo) (policy.kl_coef=0.05)"}
    same = groups["PLUS (grpo) (policy.kl_coef=0.01)"]
    assert sorted(same["seeds"]) == [0, 1] and same["runs"] == [str(views[0]), str(views[1])]
    assert same["accuracy"]["test_seen_users"]["contested"]["mean"] == 0.7
    assert groups["PLUS (grpo) (policy.kl_coef=0.05)"]["seeds"] == [0]
    assert "| PLUS (grpo) (policy.kl_coef=0.01) | 0.800 ± 0.000 (2 seeds) |" in (out / "compare.md").read_text()


def test_plus_settings_that_define_the_experiment_split_groups(tmp_path):
    base = plus_run(tmp_path, "base-s0")
    for i, changed in enumerate(
        [
            {"users_per_iter": 16},
            {"iterations": 80},
            {"rollout": {"n_samples": 8}},
            {"rm_updates_per_iter": 2},
            {"rm_pairs": "user"},
            {"policy": {"optim": {"lr": 3e-5}}},
        ]
    ):
        other = plus_run(tmp_path, f"other{i}-s1", seed=1, **changed)
        assert len(groups_of([base, other])) == 2, changed
    # Where it ran and what it printed do not make another experiment.
    moved = plus_run(
        tmp_path, "moved-s1", seed=1, ray={"num_cpus": 8}, rm_resources={"num_cpus": 2}, show=0, checkpoint_every=5
    )
    assert groups_of([base, moved]) == {"PLUS (grpo)": [0, 1]}


def test_frozen_ablation_is_its_own_group(tmp_path):
    views = [plus_run(tmp_path, "plus-s0"), plus_run(tmp_path, "frozen-s0", freeze_summarizer=True)]
    assert groups_of(views) == {"PLUS (grpo)": [0], "PLUS (grpo, frozen summarizer)": [0]}


def test_plus_name_is_the_label(tmp_path):
    views = [
        plus_run(tmp_path, "a-s0", seed=0, name="PLUS kl 0.05", policy={"kl_coef": 0.05}),
        plus_run(tmp_path, "a-s1", seed=1, name="PLUS kl 0.05", policy={"kl_coef": 0.05}),
        plus_run(tmp_path, "b-s0", seed=0),
    ]
    assert groups_of(views) == {"PLUS kl 0.05": [0, 1], "PLUS (grpo)": [0]}
    assert run_label(PlusConfig.model_validate(yaml.safe_load((tmp_path / "a-s0" / "config.yaml").read_text()))) == (
        "PLUS kl 0.05"
    )


def test_evaluate_view_is_still_a_train_rm_config(tmp_path):
    """jobs.evaluate validates the view as a TrainRMConfig; the PLUS settings travel next to it."""
    view = plus_run(tmp_path, "plus-s0", policy={"kl_coef": 0.05})
    rm_cfg = TrainRMConfig.model_validate(yaml.safe_load((view / "config.yaml").read_text()))
    assert rm_cfg.rm.conditioning == "summary" and rm_cfg.rollout.temperature == 0.0
    assert rm_cfg.models.summarizer == str((tmp_path / "plus-s0" / "best" / "summarizer").resolve())
    run = compare_job.load_run_eval(view, "eval.json")
    assert run.plus["label"] == "PLUS (grpo)" and run.plus["config"]["policy"]["kl_coef"] == 0.05


def _policy_run(root: Path, name: str, seed: int, kl: float, source: str, win: float) -> Path:
    """A jobs.personalize run directory: config.yaml and an eval.json of the shape evaluate_best writes."""
    run = root / name
    run.mkdir(parents=True)
    cfg = {"run_dir": str(run), "seed": seed, "source": source, "policy_model": "p", "policy": {"kl_coef": kl}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    judged = {"learned_reward": 1.0, "true_utility": 1.5 + win, "win_rate_vs_base": win, "personalized_share": win}
    ev = {
        "name": f"policy trained with {source}",
        "best_iteration": 50,
        "ceilings": {"kinds": ["dog", "cat"], "oracle_expected_utility": 2.0, "best_single_expected_utility": 1.5},
        "splits": {"test_unseen_users": {"all": judged, "contested": judged, "helpful": judged}},
    }
    (run / "eval.json").write_text(json.dumps(ev))
    return run


def test_policies_compare_by_source_and_setting_with_the_ceilings(tmp_path):
    """jobs.compare on stage-2 runs: seeds of one config together (mean ± CI), another kl_coef apart (named),
    the per-user optimum and best single answer beneath; reward-model runs mixed in are refused."""
    runs = [
        _policy_run(tmp_path, "plus-s0", 0, 0.5, "PLUS", 0.8),
        _policy_run(tmp_path, "plus-s1", 1, 0.5, "PLUS", 0.9),
        _policy_run(tmp_path, "plus-kl1", 0, 1.0, "PLUS", 0.6),
        _policy_run(tmp_path, "bt-s0", 0, 1.0, "bt", 0.5),
    ]
    result = compare_job.main(["--runs", json.dumps([str(r) for r in runs]), "--out", str(tmp_path / "out")])
    labels = [g["label"] for g in result["groups"]]
    assert labels == [
        "policy trained with PLUS (policy.kl_coef=0.5)",
        "policy trained with PLUS (policy.kl_coef=1.0)",
        "policy trained with bt",
    ]
    win = result["groups"][0]["policy"]["test_unseen_users"]["contested"]["win_rate_vs_base"]
    assert win["mean"] == pytest.approx(0.85) and win["n_seeds"] == 2 and win["ci95"] > 0
    table = (tmp_path / "out" / "compare.md").read_text()
    assert "| *ceiling: per-user optimum* | 2.000 | – | 1.000 |" in table
    assert "| *ceiling: best single answer* | 1.500 | – | 0.500 |" in table
    rm_run = tmp_path / "rm"
    rm_run.mkdir()
    (rm_run / "config.yaml").write_text("seed: 0\n")
    (rm_run / "eval.json").write_text(json.dumps({"accuracy": {}, "ceilings": {}}))
    with pytest.raises(SystemExit):
        compare_job.main(["--runs", json.dumps([str(runs[0]), str(rm_run)]), "--out", str(tmp_path / "o2")])

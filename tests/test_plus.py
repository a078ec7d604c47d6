"""The PLUS co-adaptation job (jobs/plus.py) at minimum size: PPO interrupted and resumed, config errors, and
the checks of a GRPO run (`check_plus_run`, on the run tests/test_ray_job.py submits)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT, run_job
from safetensors.torch import load_file

PHASES = ("generate", "score", "reference", "advantages", "train_summarizer", "train_reward_model", "sync_weights")
TINY = [
    "iterations=3",
    "users_per_iter=4",
    "rollout.n_samples=2",
    "policy.minibatch_size=8",
    "eval_every=3",
    "eval_limit=8",
    "rollout.backend=vllm",
    "rollout.max_new_tokens=12",
    "rollout.kv_cache_gib=0.1",
    "rollout.max_model_len=512",
    "rm.max_length=384",
    "deepspeed.num_ranks=1",
    "ray.num_cpus=2",
]


def check_plus_run(run, stdout: str, initial_summarizer) -> None:
    """What a finished 3-iteration TINY jobs.plus run (GRPO) must have logged and written; its run is made
    by tests/test_ray_job.py, which submits it to a Ray cluster as the README says (one run for both)."""
    assert "next: python -m jobs.evaluate --run" in stdout
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in events if e["split"] == "train"]
    assert [e["step"] for e in train] == [1, 2, 3]
    for e in train:
        for name in PHASES:
            assert e[f"time_{name}"] >= 0, name
        for name in ("reward", "kl", "policy_loss", "rm_loss", "margin"):
            assert e[name] is not None and math.isfinite(e[name]), name  # null in JSONL = non-finite
        assert -10.0 <= e["reward"] <= 0.0  # log σ(margin), clipped
        # One sync per iteration; the iteration's rollouts were sampled by the previous version.
        assert e["weight_version"] == e["step"] and e["rollout_weight_version"] == e["step"] - 1
    val = [e for e in events if e["split"] == "validation"]
    assert [e["step"] for e in val] == [3] and 0.0 <= val[0]["all"] <= 1.0
    for ckpt in ("best", "last"):
        for role in ("reward_model", "summarizer"):
            assert (run / ckpt / role / "config.json").is_file(), f"{ckpt}/{role}"
    # Both sides moved: the RM's margins leave the fresh head's near-zero scale, the policy leaves the
    # reference (KL), and the saved summarizer differs from the initial checkpoint.
    margins = [abs(e["margin"]) for e in train]
    assert max(margins[1:]) > 3 * margins[0], margins
    assert abs(train[0]["kl"]) < 1e-4 and max(abs(e["kl"]) for e in train[1:]) > abs(train[0]["kl"])
    before = load_file(str(initial_summarizer / "model.safetensors"))
    after = load_file(str(run / "last" / "summarizer" / "model.safetensors"))
    assert max((after[k] - before[k]).abs().max().item() for k in before) > 0
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["weight_version"] == 3 and set(PHASES) <= {k.replace(" ", "_") for k in summary["timings_s"]}
    cut = summary["truncation"]  # 3 iterations × 4 users × 2 summaries, scored and trained (1 RM step)
    assert (cut["max_length"], cut["scored"]["n_rows"], cut["trained"]["n_rows"]) == (384, 24, 24)
    assert 0 < cut["scored"]["max_tokens"] and all(0.0 <= e["rm_scored_truncated_share"] <= 1.0 for e in train)
    assert all(0.0 <= e["rm_trained_truncated_share"] <= 1.0 for e in train)
    assert (run / "evaluate" / "config.yaml").is_file() and (run / "evaluate" / "best").is_dir()
    assert (run / "evaluate" / "plus.yaml").is_file()  # the PLUS settings jobs.compare groups the view by
    assert "  validation accuracy: all " in stdout and " (n=8)" in stdout  # ± binomial half width


def _train_events(run) -> dict[int, dict]:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {e["step"]: e for e in events if e["split"] == "train"}


def _deterministic(event: dict) -> dict:
    return {k: v for k, v in event.items() if not k.startswith("time") and k not in ("split", "step")}


@pytest.mark.slow
def test_ppo_run_interrupted_and_resumed_matches_uninterrupted(tiny_data, tiny_models, tmp_path):
    """PPO (critic + GAE): 4 iterations straight vs 2 iterations, then --resume to 4. The resumed iterations
    3 and 4 must log the same metrics (policy, critic, RM, rollouts: weights, Adam moments, LR schedule,
    data position, sampling seeds, the reward model's drawn pairs (rm_pairs=user, 2 updates per iteration)
    and weight version all restored)."""
    base = [
        f"data.dir={tiny_data}",
        f"models.summarizer={tiny_models / 'summarizer'}",
        f"models.reward_model={tiny_models / 'reward_model'}",
        *TINY,
        "policy.algorithm=ppo",
        "critic_resources.num_cpus=0.25",
        "reference_resources.num_cpus=0.25",
        "policy.optim.warmup_steps=4",
        "policy.critic_optim.lr=1e-3",
        "eval_every=100",
        "checkpoint_every=2",
        "rm_pairs=user",
        "rm_updates_per_iter=2",
    ]
    straight, parted = tmp_path / "straight", tmp_path / "parted"
    run_job("jobs.plus", *base, "iterations=4", f"run_dir={straight}")
    run_job("jobs.plus", *base, "iterations=2", f"run_dir={parted}")
    first = _train_events(parted)
    assert sorted(first) == [1, 2] and (parted / "checkpoint" / "critic" / "iter000002").is_dir()
    proc = run_job("jobs.plus", "--resume", str(parted), "iterations=4")
    assert f"resumed {parted} at iteration 2 (weight version 2)" in proc.stdout
    want, got = _train_events(straight), _train_events(parted)
    assert sorted(got) == [1, 2, 3, 4]  # iterations 1-2 kept once, 3-4 appended
    for step in (3, 4):
        w, g = _deterministic(want[step]), _deterministic(got[step])
        assert w.keys() == g.keys()
        for key in w:
            assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-7), f"iteration {step}: {key}"
    for e in want.values():  # the critic trained and GAE ran
        assert math.isfinite(e["critic_loss"]) and e["time_values"] >= 0 and e["time_train_critic"] >= 0
    assert (parted / "checkpoint" / "state.json").is_file()
    assert sorted(p.name for p in (parted / "checkpoint" / "policy").glob("iter*")) == ["iter000004"]  # older tags gone


def test_best_checkpoint_is_chosen_on_256_validation_rows_by_default():
    from rlhf_cluster.config import PlusConfig

    cfg = PlusConfig(data={"dir": "d"}, models={"summarizer": "s", "reward_model": "r"})
    assert cfg.eval_limit == 256 and cfg.name is None


def test_resume_errors_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.plus", "--resume", str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "config.yaml not found" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["rm.conditioning=bt"], "rm.conditioning must be 'summary'"),
        (["rollout.n_samples=1"], "n_samples must be ≥ 2 for grpo/rloo"),
        (["users_per_iter=3", "rollout.n_samples=3", "deepspeed.num_ranks=2"], "divisible by deepspeed.num_ranks"),
        (
            ["users_per_iter=4", "rollout.n_samples=2", "policy.minibatch_size=3"],
            "policy.minibatch_size (3) must divide",
        ),
    ],
)
def test_plus_config_errors_exit_2(args, message):
    base = ["data.dir=x", "models.summarizer=a", "models.reward_model=b"]
    proc = subprocess.run([sys.executable, "-m", "jobs.plus", *base, *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr

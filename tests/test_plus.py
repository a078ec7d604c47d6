"""Smoke run of the PLUS co-adaptation job (jobs/plus.py) at minimum size, and its config errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT, run_job

PHASES = ("generate", "score", "reference", "advantages", "train_summarizer", "train_reward_model", "sync_weights")
TINY = [
    "iterations=3", "users_per_iter=4", "rollout.n_samples=2", "policy.minibatch_size=8", "eval_every=3",
    "eval_limit=8", "eval_backend=hf", "rollout.backend=vllm", "rollout.max_new_tokens=12",
    "rollout.kv_cache_gib=0.1", "rollout.max_model_len=512", "rm.max_length=384", "deepspeed.num_ranks=1",
    "ray.num_cpus=2",
]


@pytest.mark.slow
def test_plus_runs_and_logs_each_iteration(tiny_data, tiny_models, tmp_path):
    run = tmp_path / "plus"
    proc = run_job(
        "jobs.plus", f"data.dir={tiny_data}", f"models.summarizer={tiny_models / 'summarizer'}",
        f"models.reward_model={tiny_models / 'reward_model'}", f"run_dir={run}", *TINY,
    )
    assert "next: python -m jobs.evaluate --run" in proc.stdout
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
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["weight_version"] == 3 and set(PHASES) <= {k.replace(" ", "_") for k in summary["timings_s"]}
    assert (run / "evaluate" / "config.yaml").is_file() and (run / "evaluate" / "best").is_dir()


@pytest.mark.parametrize(
    "args, message",
    [
        (["rm.conditioning=bt"], "rm.conditioning must be 'summary'"),
        (["rollout.n_samples=1"], "n_samples must be ≥ 2"),
        (["users_per_iter=3", "rollout.n_samples=3", "deepspeed.num_ranks=2"], "divisible by deepspeed.num_ranks"),
        (["users_per_iter=4", "rollout.n_samples=2", "policy.minibatch_size=3"], "policy.minibatch_size (3) must divide"),
        (["policy.algorithm=ppo"], "needs a critic"),
    ],
)
def test_plus_config_errors_exit_2(args, message):
    base = ["data.dir=x", "models.summarizer=a", "models.reward_model=b"]
    proc = subprocess.run([sys.executable, "-m", "jobs.plus", *base, *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr

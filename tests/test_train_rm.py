"""Smoke runs of the reward-model jobs at minimum size: train_rm (2 DeepSpeed ranks) → evaluate."""

from __future__ import annotations

import json

import pytest
from conftest import run_job

TINY = [
    "rm.steps=6",
    "rm.batch_size=8",
    "rm.eval_every=3",
    "rm.eval_limit=16",
    "rm.max_length=384",
    "deepspeed.num_ranks=2",
    "deepspeed.zero_stage=2",
    "rank_resources.num_cpus=0.5",
    "ray.num_cpus=2",
]


@pytest.mark.slow
def test_train_rm_then_evaluate(tiny_data, tiny_models, tmp_path):
    run = tmp_path / "rm-oracle"
    proc = run_job(
        "jobs.train_rm",
        f"data.dir={tiny_data}",
        f"models.reward_model={tiny_models / 'reward_model'}",
        f"run_dir={run}",
        "rm.conditioning=oracle",
        "checkpoint_every=4",
        *TINY,
    )
    assert "best validation accuracy" in proc.stdout
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_000004"]
    assert (run / "checkpoints" / "step_000004" / "config.json").is_file()
    for name in ("config.yaml", "metrics.jsonl", "best.json", "best/config.json", "last/config.json"):
        assert (run / name).exists(), name
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in events if e["split"] == "validation"] == [3, 6]
    assert list((run / "tb").iterdir()), "TensorBoard events written"
    assert all(0.0 <= e["truncated_share"] <= 1.0 for e in events if e["split"] == "train")
    cut = json.loads((run / "train_summary.json").read_text())["truncation"]
    assert (cut["max_length"], cut["truncation_side"]) == (384, "keep_conditioning")
    assert 0 < cut["validation"]["n_rows"] <= 16
    assert cut["train"]["n_rows"] > 0 and cut["train"]["max_tokens"] > 0
    assert f"of {cut['train']['n_rows']} train pairs" in proc.stdout  # "none of N …" or "K of N … (x %)"

    run_job("jobs.evaluate", "--run", str(run), "ray.num_cpus=2")
    result = json.loads((run / "eval.json").read_text())
    for split in ("test_seen_users", "test_unseen_users", "pets_ood"):
        acc = result["accuracy"][split]
        assert 0.0 <= acc["all"] <= 1.0 and acc["n"] > 0
    assert result["ceilings"]["pets_ood"]["contested"]["oracle"] == pytest.approx(1.0)


def test_train_rm_config_errors_exit_2(tiny_data, tmp_path):
    import subprocess
    import sys

    args = [f"data.dir={tiny_data}", "models.reward_model=x", "rm.batch_size=7", "deepspeed.num_ranks=2"]
    proc = subprocess.run([sys.executable, "-m", "jobs.train_rm", *args], capture_output=True, text=True)
    assert proc.returncode == 2 and "divisible by deepspeed.num_ranks" in proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.train_rm",
            f"data.dir={tiny_data}",
            "models.reward_model=x",
            "rm.conditioning=summary",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "needs models.summarizer" in proc.stderr

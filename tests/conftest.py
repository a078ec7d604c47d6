"""Shared fixtures: one local Ray for the session, tiny generated data and tiny models built once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def run_job(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m <module> args`` from the repo root; fail the test with its output if it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{module} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small generated `pets` dataset (the demo's generator at test size)."""
    out = tmp_path_factory.mktemp("data") / "pets"
    run_job(
        "jobs.make_data",
        "--dataset",
        "pets",
        "--out",
        str(out),
        "--seed",
        "0",
        "pets.n_train_users=8",
        "pets.n_test_users=4",
        "pets.examples_per_user=4",
    )
    return out


@pytest.fixture(scope="session")
def tiny_models(tiny_data, tmp_path_factory) -> Path:
    """Tokenizer + tiny summarizer/reward backbone, briefly LM-pretrained on tiny_data."""
    out = tmp_path_factory.mktemp("models")
    run_job(
        "jobs.make_models",
        "--data",
        str(tiny_data),
        "--out",
        str(out),
        "--seed",
        "0",
        "summarizer.hidden_size=64",
        "summarizer.num_layers=2",
        "summarizer.num_heads=2",
        "summarizer.intermediate_size=128",
        "reward_model.hidden_size=64",
        "reward_model.num_layers=1",
        "reward_model.num_heads=2",
        "reward_model.intermediate_size=128",
        "pretrain_steps=40",
        "pretrain_batch_size=8",
        "pretrain_seq_len=256",
        "response_policy.hidden_size=64",
        "response_policy.num_layers=2",
        "response_policy.num_heads=2",
        "response_policy.intermediate_size=128",
    )
    return out


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (2 CPUs, no dashboard), as the jobs start it."""
    import ray

    from rlhf_cluster.config import RayConfig
    from rlhf_cluster.ray_setup import init_ray

    init_ray(RayConfig(num_cpus=2))
    yield ray
    ray.shutdown()

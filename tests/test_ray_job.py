"""The main job (jobs.plus) through `ray job submit --runtime-env deploy/runtime_env.yaml` against a `ray start --head`
cluster: the repo travels as the working dir and `actors/`/`jobs/` import on the cluster's workers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@pytest.fixture
def ray_head():
    """`ray start --head --block` in the foreground; terminating it takes its processes down with it
    (unlike `ray stop`, which would also stop the test session's own local Ray)."""
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"], "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    dash = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's unix socket paths must be < 108 chars
    cmd = [
        f"{bindir}/ray",
        "start",
        "--head",
        "--block",
        "--num-cpus=2",
        f"--port={_free_port()}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--include-dashboard=true",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        # fixed default ports would clash with the test session's own local Ray (its agent holds them)
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
    ]
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{dash}/api/version", timeout=90)
        yield f"http://127.0.0.1:{dash}", env
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_plus_via_ray_job_submit(ray_head, tiny_data, tiny_models, tmp_path):
    """The PLUS job (vLLM rollout, DeepSpeed policy + RM groups, reference) submitted as the README says; its
    run is the suite's check of a GRPO PLUS run (test_plus.check_plus_run)."""
    from test_plus import TINY, check_plus_run

    address, env = ray_head
    run_dir = tmp_path / "run"
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--runtime-env",
        "deploy/runtime_env.yaml",
        "--",
        "python",
        "-m",
        "jobs.plus",
        f"data.dir={tiny_data}",
        f"models.summarizer={tiny_models / 'summarizer'}",
        f"models.reward_model={tiny_models / 'reward_model'}",
        f"run_dir={run_dir}",
        *TINY,
    ]
    for _ in range(30):  # the dashboard answers before the node's job agent registers: retry only that
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
        out = proc.stdout + proc.stderr
        if "No available agent" not in out:
            break
        time.sleep(2)
    assert proc.returncode == 0, out[-5000:]
    assert "joined Ray cluster" in out  # the job joined the head, it did not start its own Ray
    assert "iter 3/3" in out and "succeeded" in out
    check_plus_run(run_dir, out, tiny_models / "summarizer")

"""Smoke test of the benchmark suite (bench/): every benchmark at minimum size, so they keep working.

`python -m bench.run --quick` runs, each in its own process: the jobs.plus phase breakdown + memory, the
rig on the demo models (rollout efficiency, GRPO ours vs TRL, weight sync, Arrow exchange, scaling) and
the Serve load test; then the report renders. The numbers are not checked against targets (minimum
sizes on a shared machine say nothing) — only that each benchmark measured what it says it measures.
TRL's side is skipped only where its environment (bench/.trl-venv, made by `make bench`) is absent.
The ~20 M-parameter bench-model rig is not in --quick (it is the demo rig's code on a bigger model).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT))


def test_text_reward_is_a_pure_function_of_the_text():
    from bench.text_reward import text_reward, trl_reward

    assert text_reward("") == 0.0
    assert text_reward("likes dogs, prefers cats") == pytest.approx(2 / 4)  # "likes", "prefers" are keywords
    assert text_reward("dog " * 40) == pytest.approx(1 - 0.02 * 28)
    assert trl_reward(["a cat", [{"role": "assistant", "content": "a cat"}]]) == [0.5, 0.5]


def test_process_roles_group_children_under_their_actor():
    from bench.common import role_of

    assert role_of(["ray::RolloutActor.generate"], "python") == "RolloutActor"
    assert role_of(["ray::IDLE"], "python") == "Ray idle worker"
    assert role_of(["VLLM::EngineCore"], "VLLM::EngineCore") == "vLLM engine process"


def test_context_pairs_are_repeated_or_cut_to_k():
    import pyarrow as pa

    from bench.scaling import with_context_pairs

    pair = pa.struct([("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())])
    t = pa.table(
        {
            "context": pa.array(
                [[{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "d", "chosen": "e", "rejected": "f"}]],
                pa.list_(pair),
            )
        }
    )
    assert [p["prompt"] for p in with_context_pairs(t, 5).column("context")[0].as_py()] == ["a", "d", "a", "d", "a"]
    assert len(with_context_pairs(t, 1).column("context")[0].as_py()) == 1


def run_group(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """subprocess.run whose timeout kills the process and all its descendants — bench.run's children
    (make_models, Ray, engines: each in a session of its own) too, not only bench.run — and fails the
    test with the output."""
    import psutil

    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        root = psutil.Process(proc.pid)
        for p in [*root.children(recursive=True), root]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[1:4])} ran past {timeout:.0f} s:\n{out[-4000:]}{err[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_run_group_kills_the_children_past_its_timeout():
    child = (
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
        "start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print('up', flush=True); "
        "time.sleep(60)"
    )  # a grandchild in its own session, not holding the pipes
    with pytest.raises(pytest.fail.Exception, match="ran past 2 s"):
        run_group([sys.executable, "-c", child], timeout=2)
    out = subprocess.run(["pgrep", "-f", "time.sleep\\(60\\)"], capture_output=True, text=True).stdout
    assert out.strip() == "", out  # the grandchild died with the group
    assert run_group([sys.executable, "-c", "print('ok')"], timeout=30).stdout == "ok\n"


@pytest.mark.slow
def test_quick_suite_measures_every_benchmark_and_renders_a_report(tiny_data, tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_BENCH_WORK", str(tmp_path / "runs"))  # demo data, models, scratch: not the checkout
    (tmp_path / "runs" / "demo").mkdir(parents=True)  # the suite's tiny data and models stand in for the demo's
    (tmp_path / "runs" / "demo" / "data").symlink_to(tiny_data)  # (building those would take minutes here)
    (tmp_path / "runs" / "demo" / "models").symlink_to(tiny_models)
    proc = run_group([sys.executable, "-m", "bench.run", "--quick", "--out", str(tmp_path)], timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (tmp_path / "runs" / "demo" / "models" / "models.json").is_file()
    results = json.loads(next(tmp_path.glob("*-quick.json")).read_text())
    assert not results["failed"], results["failed"]
    parts = results["parts"]

    ph = parts["phases"]  # 4: jobs.plus phases from metrics.jsonl, busy/idle per actor; 8: memory
    for name in ("generate", "score", "reference", "train_summarizer", "train_reward_model", "sync_weights"):
        assert ph["phases_s"][name] >= 0, name
    assert set(ph["actors"]) == {"RolloutActor", "ReferenceActor", "PolicyRank", "RewardModelRank"}
    assert 0 < ph["memory"]["peak_pss_sum_gib"] < 24 and ph["memory"]["role_peak_pss_gib"]["RolloutActor"] > 0

    rig = parts["rig-demo"]
    b = rig["rollout"]["batches"][0]  # 1: pipeline vs direct engine, same work
    assert (
        b["direct_summaries_per_s"] > 0
        and b["pipeline_summaries_per_s"] > 0
        and math.isfinite(b["ratio_summaries_per_s"])
    )
    assert rig["rollout"]["kv_cache"]["sized_from_config"]  # 8: KV cache from rollout.kv_cache_gib
    modes = rig["rollout"]["engine_modes"]  # the engine in process vs vLLM's separate engine process
    assert all(modes["start_s"][k] > 0 and modes["generate_s"][k] > 0 for k in ("in_process", "separate"))
    ws = rig["weight_sync"]  # 2
    assert ws["bytes"] > 0 and 0 < ws["share_of_iteration"] < 1 and ws["engine_load_s"] > 0
    paths = ws["paths"]  # weights skip the driver: the former path holds the whole blob there on top
    held = paths["via_driver"]["driver_peak_bytes"] - paths["direct"]["driver_peak_bytes"]
    assert held >= 0.75 * ws["bytes"], (held, ws["bytes"])
    ar = rig["arrow"]  # 3
    assert {t["table"] for t in ar["transfers"]} >= {
        "requests",
        "rollouts",
        "ref_logprobs",
        "policy_batch",
        "reward_pairs",
    }
    assert 0 < ar["share_of_iteration"] < 1
    g = rig["grpo"]  # 5: our side always; TRL's unless its environment is absent
    assert len(g["ours"]["step_s"]) == g["workload"]["steps"] and g["ours_step_s"] > 0
    if (ROOT / "bench" / ".trl-venv" / "bin" / "python").is_file():
        assert g["trl"].get("prompt_tokens_match_ours") is True, g["trl"]
        assert len(g["trl"]["step_s"]) == g["workload"]["steps"] and g["speedup"] > 0
    else:
        assert "skipped" in g["trl"]
    assert {c["axis"] for c in rig["scaling"]["cells"]} == {"users", "context_pairs", "max_new_tokens"}  # 7

    sv = parts["serve"]  # 6
    if "skipped" not in sv:
        assert [c["concurrency"] for c in sv["cells"]] == [1, 8]
        assert all(c["requests_per_s"] > 0 and c["errors"] == 0 for c in sv["cells"])
        assert sv["memory"]["peak_pss_sum_gib"] > 0

    md = next(tmp_path.glob("*-quick.md")).read_text()
    for heading in (
        "## Targets",
        "## 1. Rollout",
        "## 2. Weight sync",
        "## 3. Arrow",
        "## 4. Phase",
        "## 5. PLUS-shaped GRPO",
        "## 6. Serve",
        "## 7. Scaling",
        "## 8. Memory",
    ):
        assert heading in md, heading
    assert "failed to render" not in md
    assert len(list(tmp_path.glob("*-quick-*.png"))) >= 4

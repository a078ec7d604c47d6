"""Phase breakdown of the real PLUS job, and the memory of the whole demo run.

    python -m bench.plus_phases --out PART.json [--quick] [--iterations N]

Runs ``python -m jobs.plus --config configs/demo.yaml`` for a few iterations (validation and checkpoints
pushed to the end, as a long run would amortise them) while sampling its whole process tree — driver,
Ray GCS/raylet, every actor and the vLLM engine processes under the rollout actor — with psutil
(bench/common.py TreeSampler). From RUN_DIR/metrics.jsonl: each phase's median seconds per iteration
(iteration 1, the warm-up, left out), the iteration's wall time (between consecutive log lines) and
what is left for the driver. Per actor: the share of the iteration it is busy (the phases it serves:
rollout = generate + sync; reference = reference; policy = train summarizer + sync; reward model =
score + train reward model) and idle (the rest — the loop is synchronous), and the CPU it really used
over the same iterations (cores = CPU seconds ÷ wall seconds, its child processes included).
Memory: peak of the tree's summed PSS (and RSS) over the whole run; target ≤ 8 GiB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time

from bench.common import (
    BENCH_DIR,
    DEMO_CONFIG,
    DEMO_DATA,
    DEMO_MODELS,
    ROOT,
    TreeSampler,
    median,
    require_demo_inputs,
    setting,
    write_part,
)

ROLE_PHASES = {  # which phases keep which actor busy (the driver waits on it meanwhile)
    "RolloutActor": ("generate", "sync_weights"),
    "ReferenceActor": ("reference",),
    "PolicyRank": ("train_summarizer", "sync_weights"),
    "RewardModelRank": ("score", "train_reward_model"),
}


def run_job(
    iterations: int, run_dir, timeout_s: float, extra: list[str]
) -> tuple[subprocess.CompletedProcess, TreeSampler]:
    cmd = [
        sys.executable,
        "-m",
        "jobs.plus",
        "--config",
        str(DEMO_CONFIG),
        f"run_dir={run_dir}",
        f"data.dir={DEMO_DATA}",
        f"models.summarizer={DEMO_MODELS / 'summarizer'}",
        f"models.reward_model={DEMO_MODELS / 'reward_model'}",
        f"iterations={iterations}",
        "eval_every=100000",
        "checkpoint_every=100000",
        "eval_limit=8",
        *extra,
    ]
    print("[phases] " + " ".join(cmd[1:]), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with TreeSampler(proc.pid) as sampler:
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise SystemExit(f"[phases] jobs.plus ran past {timeout_s:.0f} s; last output:\n{out[-3000:]}") from None
    if proc.returncode != 0:
        raise SystemExit(f"[phases] jobs.plus exited {proc.returncode}:\n{out[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, ""), sampler


def analyse(run_dir, sampler: TreeSampler) -> dict:
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = sorted((e for e in events if e["split"] == "train"), key=lambda e: e["step"])
    steady = train[1:] if len(train) > 1 else train
    names = [k[5:] for k in train[0] if k.startswith("time_")]
    walls = [b["time"] - a["time"] for a, b in zip(train, train[1:])] or [sum(train[0][f"time_{n}"] for n in names)]
    phases = {n: median(e[f"time_{n}"] for e in steady) for n in names}
    wall = median(walls)
    busy = {role: sum(phases.get(p, 0.0) for p in ps) for role, ps in ROLE_PHASES.items()}
    cpu = sampler.cpu_between(train[0]["time"], train[-1]["time"]) if len(train) > 1 else {}
    window = cpu.pop("window_s", None)
    actors = {
        role: {
            "busy_share": busy[role] / wall,
            "idle_share": 1 - busy[role] / wall,
            "cpu_cores": (cpu.get(role, 0.0) / window) if window else None,
        }
        for role in ROLE_PHASES
    }
    summary = json.loads((run_dir / "train_summary.json").read_text())
    return {
        "iterations": len(train),
        "steady_iterations": len(steady),
        "iteration_s": wall,
        "phases_s": phases,
        "phase_share": {n: v / wall for n, v in phases.items()},
        "driver_other_s": wall - sum(phases.values()),
        "actors": actors,
        "cpu_cores_by_role": {r: v / window for r, v in cpu.items()} if window else {},
        "one_off_s": {k: v for k, v in summary["timings_s"].items() if k.replace(" ", "_") not in names},
        "sync_share": phases.get("sync_weights", 0.0) / wall,
        "summary_tokens_mean": median(e["summary_tokens"] for e in steady),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=None, help="default 12 (quick: 2)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--timeout-s", type=float, default=600)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    require_demo_inputs()
    n = args.iterations or (2 if args.quick else 12)
    run_dir = BENCH_DIR / ("plus-demo-quick" if args.quick else "plus-demo")
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    before = setting()
    # quick (smoke test): the HF rollout engine starts in a second instead of vLLM's ~20 s; same code path here
    extra = ["rollout.backend=hf"] if args.quick else []
    proc, sampler = run_job(n, run_dir, args.timeout_s, extra)
    res = analyse(run_dir, sampler)
    mem = sampler.report()
    res.update(
        setting={
            **before,
            "config": str(DEMO_CONFIG.relative_to(ROOT)),
            "iterations": n,
            "overrides": "eval_every/checkpoint_every pushed to the end, eval_limit=8"
            + (", " + " ".join(extra) if extra else ""),
            "load_avg_1m_after": setting()["load_avg_1m"],
        },
        memory={**mem, "target_gib": 8.0},
        wall_s=time.perf_counter() - t0,
    )
    print(
        f"[phases] {res['steady_iterations']} steady iterations, {res['iteration_s']:.2f} s each: "
        + ", ".join(f"{k} {v:.2f}" for k, v in res["phases_s"].items())
        + f", driver/other {res['driver_other_s']:.2f}",
        flush=True,
    )
    for role, a in res["actors"].items():
        cores = f"{a['cpu_cores']:.2f} cores" if a["cpu_cores"] is not None else "n/a"
        print(f"[phases]   {role}: busy {a['busy_share']:.0%}, idle {a['idle_share']:.0%}, CPU {cores}", flush=True)
    print(
        f"[memory] demo run peak PSS {mem['peak_pss_sum_gib']:.2f} GiB (RSS sum {mem['peak_rss_sum_gib']:.2f} GiB; "
        f"target ≤ 8 GiB); by role: " + ", ".join(f"{k} {v:.2f}" for k, v in mem["role_peak_pss_gib"].items()),
        flush=True,
    )
    write_part(args.out, "phases", res)


if __name__ == "__main__":
    main()

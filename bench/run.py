"""The benchmark suite: `make bench` → bench/results/<timestamp>.json, .md, -*.png (and .log).

    python -m bench.run                         # everything (≤ 20 min on the 2-core laptop)
    python -m bench.run --quick                 # every benchmark at minimum size (the smoke test)
    python -m bench.run --only rollout,grpo     # a subset: rollout weight_sync arrow phases grpo serve scaling memory
    python -m bench.report bench/results/<timestamp>.json     # re-render a report

Each benchmark runs in its own process (its own Ray, its own engines; nothing leaks into the next) with
a time limit, prints what it measured and the setting, and writes a JSON part; the parts are merged
into one results file and rendered (bench/report.py). Processes:

  phases     jobs.plus on configs/demo.yaml, sampled: phase breakdown, idle per actor, demo memory
  rig-demo   live PLUS actors on the demo models: rollout efficiency, GRPO vs TRL (tiny model), weight
             sync, Arrow exchange, scaling
  rig-bench  the same on the ~20 M-parameter bench model (not in --quick): rollout, GRPO vs TRL, sync, Arrow
  serve      bench/serve_load.py against deploy/serve.py: requests/s, p50/p99, replicas, Serve memory

TRL runs in its own environment (bench/.trl-venv), created here on first use unless --quick or --no-trl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import DEMO_DATA, DEMO_MODELS, ROOT, setting

BENCHMARKS = ("rollout", "weight_sync", "arrow", "phases", "grpo", "serve", "scaling", "memory")
RIG_PARTS = {
    "demo": ("rollout", "grpo", "weight_sync", "arrow", "scaling"),
    "bench": ("rollout", "grpo", "weight_sync", "arrow"),
}
# per-process time limits, seconds (full run: together ≤ 21 min; --quick: generous, it is a smoke test on a
# machine other jobs may be loading — a limit there only stops a hung process)
LIMITS = {"phases": (240, 300), "rig-demo": (420, 480), "rig-bench": (420, 0), "serve": (180, 240)}


def plan(only: set[str], quick: bool) -> list[tuple[str, list[str]]]:
    """(process name, argv after `python -m`) in run order."""
    steps = []
    if only & {"phases", "memory"}:
        steps.append(("phases", ["bench.plus_phases"]))
    for model, parts in RIG_PARTS.items():
        chosen = [p for p in parts if p in only]
        if chosen and not (quick and model == "bench"):
            steps.append((f"rig-{model}", ["bench.rig_suite", "--model", model, "--parts", ",".join(chosen)]))
    if only & {"serve", "memory"}:
        steps.append(("serve", ["bench.serve_endpoint"]))
    return steps


def ensure_demo_inputs(log) -> None:
    py = sys.executable
    if not (DEMO_DATA / "ceilings.json").is_file():
        _run([py, "-m", "jobs.make_data", "--dataset", "pets", "--out", str(DEMO_DATA), "--seed", "0"], log)
    if not (DEMO_MODELS / "models.json").is_file():
        _run([py, "-m", "jobs.make_models", "--data", str(DEMO_DATA), "--out", str(DEMO_MODELS), "--seed", "0"], log)


def _run(cmd: list[str], log, timeout: float | None = None) -> int:
    """Run from the repo root; every line to the log, the benchmark's own lines ("[...]") to the console.
    Past ``timeout`` the whole process group (its Ray and engine processes too) is killed."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )

    def pump() -> None:
        for line in proc.stdout:
            log.write(line)
            if line.startswith(("[", "!!", "Traceback", "SystemExit")) or "Error:" in line:
                print(line, end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait()
        print(f"!! {' '.join(cmd[2:4])}: stopped after {timeout:.0f} s (time limit)", flush=True)
        rc = -9
    reader.join(timeout=10)
    log.flush()
    return rc


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description="Benchmark suite (see bench/README.md)")
    p.add_argument("--quick", action="store_true", help="minimum sizes: keeps every benchmark working (smoke test)")
    p.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="results directory")
    p.add_argument("--no-trl", action="store_true", help="do not install TRL's environment if it is missing")
    p.add_argument(
        "--threads", type=int, default=1, help="OpenMP threads per actor, and for TRL (see bench/rig_suite.py)"
    )
    args = p.parse_args(argv)
    only = {x for x in args.only.split(",") if x}
    if unknown := only - set(BENCHMARKS):
        p.error(f"unknown benchmarks {sorted(unknown)}; choose from {', '.join(BENCHMARKS)}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    parts_dir = out_dir / f"{stamp}-parts"
    parts_dir.mkdir()
    t0 = time.perf_counter()
    results = {
        "stamp": stamp,
        "quick": args.quick,
        "only": sorted(only),
        "setting": setting(),
        "parts": {},
        "failed": {},
    }
    with open(out_dir / f"{stamp}.log", "w") as log:
        ensure_demo_inputs(log)
        if "grpo" in only and not args.quick and not args.no_trl:
            from bench.grpo_vs_trl import ensure_trl_env

            ensure_trl_env()
        for name, module in plan(only, args.quick):
            limit = LIMITS[name][1 if args.quick else 0]
            part = parts_dir / f"{name}.json"
            cmd = [sys.executable, "-m", *module, "--out", str(part)] + (["--quick"] if args.quick else [])
            if name.startswith("rig-"):
                cmd += [
                    "--deadline-s",
                    str(int(limit * 0.55)),
                    "--threads",
                    str(args.threads),
                ]  # parts start before this; TRL and shutdown after
            print(f"== {name} (limit {limit} s)", flush=True)
            t = time.perf_counter()
            rc = _run(cmd, log, timeout=limit)
            if part.is_file():  # a process stopped at its limit may have written what it finished
                results["parts"][name] = json.loads(part.read_text())
            if rc != 0:
                kept = " (the parts it finished are kept)" if part.is_file() else ""
                why = f"stopped at its {limit} s time limit" if rc == -9 else f"exit {rc}"
                results["failed"][name] = f"{why} after {time.perf_counter() - t:.0f} s{kept}; see {stamp}.log"
    shutil.rmtree(parts_dir, ignore_errors=True)  # merged into the results file
    results["wall_s"] = time.perf_counter() - t0
    path = out_dir / f"{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    from bench.report import render

    md = render(path)
    print(
        f"== done in {results['wall_s'] / 60:.1f} min: {path}, {md}"
        + (f"; FAILED: {', '.join(results['failed'])}" if results["failed"] else ""),
        flush=True,
    )
    return path


if __name__ == "__main__":
    main()

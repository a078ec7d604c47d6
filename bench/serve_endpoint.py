"""Serve endpoint: requests/s and p50/p99 latency of POST /v1/rewards (stored summaries) at 1, 8, 32
concurrent clients, with one and two reward-model replicas — and the Serve app's peak memory.

    python -m bench.serve_endpoint --out PART.json [--quick]

The load test is bench/serve_load.py (deploys deploy/serve.py's app on a local Ray, stores summaries,
runs client threads for a fixed window per cell); this runs it as a subprocess and samples that process
tree (Ray, the Serve proxy/controller, ingress and model replicas, the client threads) for memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, TreeSampler, require_demo_inputs, setting, write_part

SCRIPT = ROOT / "bench" / "serve_load.py"


def usable() -> str | None:
    """None if bench/serve_load.py exists and answers --help; else why not."""
    if not SCRIPT.is_file():
        return f"{SCRIPT.relative_to(ROOT)} is missing"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    return None if proc.returncode == 0 else f"serve_load.py --help exited {proc.returncode}: {proc.stderr[-500:]}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--timeout-s", type=float, default=420)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    require_demo_inputs()
    if why := usable():
        print(f"[serve] skipped: {why}", flush=True)
        write_part(args.out, "serve", {"skipped": why})
        return
    cells = (
        ["--concurrency", "1", "8", "--replicas", "1", "--duration", "1", "--warmup", "0.5"]
        if args.quick
        else ["--concurrency", "1", "8", "32", "--replicas", "1", "2", "--duration", "5", "--warmup", "1.5"]
    )
    before = setting()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "serve_load.json"
        cmd = [sys.executable, str(SCRIPT), *cells, "--out", str(out)]
        print("[serve] " + " ".join(cmd[1:]), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with TreeSampler(proc.pid) as sampler:
            try:
                log, _ = proc.communicate(timeout=args.timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                log, _ = proc.communicate()
        if proc.returncode != 0 or not out.is_file():
            tail = "\n".join(log.splitlines()[-30:])
            print(f"[serve] serve_load.py failed (exit {proc.returncode}):\n{tail}", flush=True)
            write_part(args.out, "serve", {"error": f"serve_load.py exit {proc.returncode}", "log_tail": tail})
            return
        load = json.loads(out.read_text())
    for line in log.splitlines():
        if line.startswith(("  concurrency", "replicas", "reward-model replicas")):
            print(f"[serve] {line.strip()}", flush=True)
    mem = sampler.report()
    print(
        f"[memory] Serve app (+ clients) peak PSS {mem['peak_pss_sum_gib']:.2f} GiB (RSS sum "
        f"{mem['peak_rss_sum_gib']:.2f} GiB)",
        flush=True,
    )
    write_part(
        args.out,
        "serve",
        {
            "setting": {**before, **load["setting"]},
            "cells": load["results"],
            "memory": mem,
            "wall_s": time.perf_counter() - t0,
        },
    )


if __name__ == "__main__":
    main()

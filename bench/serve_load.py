"""Bounded load test of the reward endpoint on loopback: POST /v1/rewards with stored summaries.

    python bench/serve_load.py                                  # the demo's tiny models (make demo)
    python bench/serve_load.py --run-dir runs/demo/plus --out bench/results/serve_load.json
    python bench/serve_load.py --concurrency 1 8 --replicas 1 --duration 3     # a quick look

For each reward-model replica count (default 1 and 2) the app is deployed afresh on a local Ray,
``--users`` summaries are stored, and then for each concurrency (default 1, 8, 32) that many client
threads (one keep-alive ServeClient each) send requests back to back for ``--duration`` seconds
after a ``--warmup``. Reported per cell: requests/s, p50/p99 latency, errors. The clients run on the
same cores as the server (2 on the laptop): compare cells within one run, not across machines.
Time is bounded: about deploys + cells × (warmup + duration): the defaults take 1.5–3 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for key, value in (
    ("RAY_AUTH_MODE", "disabled"),
    ("RAY_USAGE_STATS_ENABLED", "0"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(key, value)

import numpy as np  # noqa: E402

from rlhf_cluster.serve_client import ServeClient, ServeError  # noqa: E402

APP = "serve_load"
TOKEN = "serve-load-bench-token-0123456789"
PROMPT = "What is the best way to correct my pet when it misbehaves at home?"
RESPONSES = [
    "As the owner of a retriever, use one clear word for each command and stay consistent every day.",
    "Ignore it and hope the behaviour goes away on its own, most pets grow out of it eventually.",
    "Reward the calm moments with a treat so that your cat learns which behaviour you want to see.",
    "A firm voice and a short time-out usually work; keep sessions short and end on a success.",
    "Ask a vet whether something is wrong first: sudden misbehaviour can be a sign of pain.",
    "Give the rabbit more space and chew toys; boredom is the most common cause of damage.",
    "Use a spray bottle every time, it is quick and the pet will soon stop doing it.",
    "Keep a diary of when it happens, then change the routine around those times.",
]
SUMMARIES = [
    "Prefers gentle, harmless advice.",
    "Wants the most helpful answer, even if blunt.",
    "Owns a cat and dislikes punishment.",
    "Likes short answers about dogs.",
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--run-dir", help="a jobs.plus / jobs.train_rm run directory to serve")
    src.add_argument(
        "--reward-model",
        default=str(Path(os.environ.get("RLHF_BENCH_WORK", ROOT / "runs")) / "demo/models/reward_model"),
        help="a reward checkpoint (default: the demo's tiny backbone, untrained head)",
    )
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="client threads per cell")
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="reward-model replica counts to compare")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each cell")
    p.add_argument(
        "--responses",
        type=int,
        default=4,
        choices=range(1, len(RESPONSES) + 1),
        metavar="N",
        help=f"responses per request (1–{len(RESPONSES)})",
    )
    p.add_argument("--users", type=int, default=16, help="users with a stored summary (requests cycle through them)")
    p.add_argument("--replica-cpus", type=float, default=0.5, help="num_cpus of each reward-model replica")
    p.add_argument("--max-batch-size", type=int, default=64, help="reward-model serve.batch size, in responses")
    p.add_argument("--batch-wait-s", type=float, default=0.005, help="reward-model serve.batch wait timeout")
    p.add_argument("--out", help="also write the results here as JSON")
    args = p.parse_args(argv)
    if min(args.concurrency + args.replicas + [args.users]) < 1 or args.duration <= 0 or args.warmup < 0:
        p.error("--concurrency, --replicas and --users must be ≥ 1, --duration > 0, --warmup ≥ 0")
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_args(args, replicas: int, store: Path) -> dict:
    source = {"run_dir": args.run_dir} if args.run_dir else {"models": {"reward_model": args.reward_model}}
    return {
        **source,
        "store_path": str(store),
        "auth": {"token": TOKEN},
        "deployments": {
            "reward_model": {
                "num_replicas": replicas,
                "resources": {"num_cpus": args.replica_cpus},
                "max_batch_size": args.max_batch_size,
                "batch_wait_timeout_s": args.batch_wait_s,
                "max_ongoing_requests": max(64, args.max_batch_size),
            }
        },
    }


def run_cell(url: str, args, concurrency: int) -> dict:
    """``concurrency`` threads send requests back to back; latencies of those finished in the window."""
    stop_warmup = time.perf_counter() + args.warmup
    stop = stop_warmup + args.duration
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []

    def client_loop(i: int) -> None:
        with ServeClient(url, token=TOKEN, timeout_s=30) as client:
            n = i
            while (now := time.perf_counter()) < stop:
                user = f"user-{n % args.users}"
                n += concurrency
                try:
                    client.rewards(PROMPT, RESPONSES[: args.responses], user_id=user)
                except ServeError as err:
                    errors.append(str(err)[:200])
                    continue
                done = time.perf_counter()
                if now >= stop_warmup and done <= stop:
                    latencies[i].append(done - now)

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=args.warmup + args.duration + 60)
    lat = np.array([x for per in latencies for x in per]) * 1e3
    return {
        "concurrency": concurrency,
        "requests": int(lat.size),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "requests_per_s": round(lat.size / args.duration, 1),
        "responses_per_s": round(lat.size * args.responses / args.duration, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    from ray import serve

    from deploy.serve import build_app
    from rlhf_cluster.config import RayConfig
    from rlhf_cluster.ray_setup import init_ray

    cluster = init_ray(RayConfig())
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    setting = {
        "cpus": os.cpu_count(),
        "ray_cpus": cluster.get("CPU"),
        "source": args.run_dir or args.reward_model,
        "responses_per_request": args.responses,
        "users": args.users,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "replica_cpus": args.replica_cpus,
        "max_batch_size": args.max_batch_size,
        "batch_wait_s": args.batch_wait_s,
        "client": "threads in this process, one keep-alive session each",
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),  # the machine may be shared: read cells with it
    }
    print("setting: " + ", ".join(f"{k}={v}" for k, v in setting.items()), flush=True)
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for replicas in args.replicas:
                t0 = time.perf_counter()
                serve.run(
                    build_app(app_args(args, replicas, Path(tmp) / f"store-{replicas}.sqlite")),
                    name=APP,
                    route_prefix="/",
                )
                with ServeClient(url, token=TOKEN) as client:
                    for u in range(args.users):
                        client.set_summary(f"user-{u}", SUMMARIES[u % len(SUMMARIES)])
                print(f"reward-model replicas={replicas}: deployed in {time.perf_counter() - t0:.1f}s", flush=True)
                for concurrency in args.concurrency:
                    cell = {"replicas": replicas, **run_cell(url, args, concurrency)}
                    results.append(cell)
                    print(
                        f"  concurrency {concurrency:>3}: {cell['requests_per_s']:>7.1f} req/s "
                        f"({cell['responses_per_s']:.0f} responses/s)  p50 {cell['p50_ms']} ms  p99 {cell['p99_ms']} ms"
                        + (f"  errors {cell['errors']} (first: {cell['first_error']})" if cell["errors"] else ""),
                        flush=True,
                    )
                serve.delete(APP)
    finally:
        serve.shutdown()
    _print_replica_effect(results)
    setting["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    report = {"setting": setting, "results": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return report


def _print_replica_effect(results: list[dict]) -> None:
    """Throughput of each replica count relative to the first, at each concurrency."""
    base = {r["concurrency"]: r for r in results if r["replicas"] == results[0]["replicas"]}
    for r in results:
        b = base.get(r["concurrency"])
        if r["replicas"] != results[0]["replicas"] and b and b["requests_per_s"]:
            print(
                f"replicas {r['replicas']} vs {b['replicas']} at concurrency {r['concurrency']}: "
                f"{r['requests_per_s'] / b['requests_per_s']:.2f}× req/s, p99 {r['p99_ms']} vs {b['p99_ms']} ms"
            )


if __name__ == "__main__":
    main()

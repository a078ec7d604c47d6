"""The benchmarks that need live PLUS actors, on one set of them: rollout efficiency, GRPO vs TRL, weight
sync, Arrow exchange, scaling.

    python -m bench.rig_suite --model demo  --parts rollout,grpo,weight_sync,arrow,scaling --out PART.json
    python -m bench.rig_suite --model bench --parts rollout,grpo,weight_sync,arrow --out PART.json [--quick]

--model demo: configs/demo.yaml as it is (tiny models from `make demo`); --model bench: the same config
with the ~20 M-parameter bench summarizer (bench/common.py). Order: rollout (a second, direct engine,
shut down after) → grpo, our side (text reward) → PLUS iterations, from which weight sync and Arrow
exchange are read (bench model: read from the GRPO steps instead, to stay inside the time limit) →
scaling (restarts the rollout engine) → Ray down → grpo, TRL's side (so that no idle actor shares the
cores with it). The JSON part is rewritten after each part.

Threads: --threads (default 1) OpenMP threads for every actor and for TRL's process alike. 1 is what
jobs.plus gets from Ray for the demo's 0.5-CPU actors, and it is robust on a shared machine: with 2
threads a torch process on 2 busy cores stalls at every OpenMP barrier (seen here: TRL's step went from
0.7 s at 1 thread to 20 s at 2 while other jobs ran). vLLM binds its worker to a core of its own choice.
"""

from __future__ import annotations

import argparse
import os
import time

from bench import arrow_exchange, grpo_vs_trl, rollout_efficiency, scaling, weight_sync
from bench.common import (
    BENCH_MODEL_SHAPE,
    DEMO_MODELS,
    bench_model,
    demo_config,
    parameters,
    require_demo_inputs,
    setting,
    start_ray,
    write_part,
)
from bench.rig import Rig, run_iterations

PARTS = ("rollout", "grpo", "weight_sync", "arrow", "scaling")

# (full, quick) sizes of each part, per model
SIZES = {
    "demo": {
        "rollout": ({"batches": [8, 64], "rounds": {8: 10, 64: 4}}, {"batches": [8], "rounds": {8: 1}}),
        "grpo_steps": (6, 2),
        "plus_iterations": (5, 2),
        "scaling": (
            {"users": [4, 8, 16], "context_pairs": [1, 6, 12], "summary_caps": [12, 24, 48], "iters": 2},
            {"users": [4], "context_pairs": [1], "summary_caps": [24], "iters": 1},
        ),
    },
    # bench model: weight sync and Arrow are read from the GRPO steps (a PLUS iteration minus the small RM
    # phases), which keeps this process inside its time limit; no reward-model group is started
    "bench": {
        "rollout": ({"batches": [8], "rounds": {8: 4}}, {"batches": [8], "rounds": {8: 1}}),
        "grpo_steps": (3, 2),
        "plus_iterations": (None, None),
        "scaling": (None, None),
    },
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("demo", "bench"), default="demo")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--quick", action="store_true", help="minimum sizes (smoke test)")
    p.add_argument("--deadline-s", type=float, default=1e9, help="skip parts that start after this many seconds")
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads per actor and for TRL's process")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    parts = [x for x in args.parts.split(",") if x]
    if unknown := set(parts) - set(PARTS):
        p.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    q = 1 if args.quick else 0
    sizes = SIZES[args.model]
    require_demo_inputs()
    t_start = time.perf_counter()

    model = DEMO_MODELS / "summarizer" if args.model == "demo" else bench_model()
    # the bench model's KV per token is 12× the demo's: 1 GiB holds ~44k tokens (32 contexts × 4 samples fit)
    cfg = demo_config(f"models.summarizer={model}", *(["rollout.kv_cache_gib=1.0"] if args.model == "bench" else []))
    result = {
        "setting": {
            **setting(),
            "model": args.model,
            "summarizer": str(model),
            "parameters": parameters(model),
            "shape": BENCH_MODEL_SHAPE if args.model == "bench" else "demo (make_models defaults)",
            "users_per_iter": cfg.users_per_iter,
            "n_samples": cfg.rollout.n_samples,
            "max_new_tokens": cfg.rollout.max_new_tokens,
            "kv_cache_gib": cfg.rollout.kv_cache_gib,
            "quick": args.quick,
        },
        "skipped": {},
    }
    result["setting"].update(start_ray(num_cpus=os.cpu_count() or 2, threads_per_actor=args.threads))

    def fits(part: str) -> bool:
        if time.perf_counter() - t_start < args.deadline_s:
            return True
        result["skipped"][part] = f"time budget ({args.deadline_s:.0f} s) spent"
        print(f"[rig] {part}: skipped, time budget spent", flush=True)
        return False

    plus_its = sizes["plus_iterations"][q]
    need_rm = bool(plus_its and {"weight_sync", "arrow"} & set(parts)) or "scaling" in parts
    save = lambda: write_part(args.out, f"rig-{args.model}", {**result, "wall_s": time.perf_counter() - t_start})  # noqa: E731
    rig = Rig(cfg, with_rm=need_rm)
    result["startup_s"] = rig.startup_s
    print(
        f"[rig] {args.model} summarizer ({result['setting']['parameters']:,} params): actors up in "
        f"{rig.startup_s:.1f} s",
        flush=True,
    )
    spec, its, source = None, None, None
    try:  # the part file is rewritten after each part: a process stopped at its time limit keeps what it measured
        if "rollout" in parts and fits("rollout"):
            result["rollout"] = rollout_efficiency.measure(rig, **sizes["rollout"][q])
            save()
        if "grpo" in parts and fits("grpo"):
            spec = grpo_vs_trl.workload(rig, sizes["grpo_steps"][q])
            ours, grpo_its = grpo_vs_trl.run_ours(rig, spec)
            result["grpo"] = grpo_vs_trl.compare(
                args.model,
                result["setting"]["parameters"],
                spec,
                ours,
                {"skipped": "TRL's side did not run (stopped at the time limit)", "pending": True},
                quiet=True,
            )
            its, source = grpo_its, "GRPO steps (text reward, no reward-model phases)"
            save()
        if {"weight_sync", "arrow"} & set(parts) and plus_its and fits("plus_iterations"):
            its = run_iterations(rig, plus_its, cfg.users_per_iter, first_it=1)
            source = "PLUS iterations (reward model)"
            result["plus_iterations"] = [{k: v for k, v in it.items() if k != "tables"} for it in its]
        if its is None and {"weight_sync", "arrow"} & set(parts) and fits("iterations"):
            its = run_iterations(rig, 2, cfg.users_per_iter, first_it=1, reward="text")
            source = "GRPO steps (text reward, no reward-model phases)"
        if its is not None:
            if "weight_sync" in parts:
                result["weight_sync"] = {**weight_sync.summarize(its, args.model), "iterations_from": source}
                result["weight_sync"]["paths"] = weight_sync.compare_paths(rig, 2 if args.quick else 6, args.model)
            if "arrow" in parts:
                result["arrow"] = {**arrow_exchange.measure(rig, its, args.model), "iterations_from": source}
            save()
        if "scaling" in parts and sizes["scaling"][q] and fits("scaling"):
            result["scaling"] = scaling.measure(rig, **sizes["scaling"][q])
            save()
    finally:
        rig.shutdown()
        import ray

        ray.shutdown()
    if spec is not None:
        budget = min(1800.0, max(60.0, args.deadline_s - (time.perf_counter() - t_start) + 120))
        trl = grpo_vs_trl.run_trl(spec, timeout_s=budget, threads=args.threads)
        result["grpo"] = grpo_vs_trl.compare(
            args.model, result["setting"]["parameters"], spec, result["grpo"]["ours"], trl
        )
    if "grpo" in result:
        result["grpo"]["threads"] = args.threads
    save()


if __name__ == "__main__":
    main()

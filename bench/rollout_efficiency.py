"""Rollout efficiency: summaries/s through the pipeline ÷ the same vLLM engine called directly.

Pipeline = what jobs.plus does each iteration: build the ROLLOUT_REQUEST Arrow batch on the driver
(``jobs.plus.rollout_requests``), ``RolloutActor.generate.remote`` through Ray, the actor turns Arrow into
engine inputs and the samples back into a ROLLOUT_SCHEMA table, ``ray.get`` hands it to the driver.
Direct = ``rlhf_cluster.generation.VllmEngine`` (the class the actor wraps), built in this process
from the same checkpoint and RolloutConfig, called with the same token ids and seeds.

Both engines are up at once and the calls alternate in ABBA order (direct, pipeline | pipeline, direct |
…) on fresh contexts each round, so machine load and prefix-cache state hit both alike; a warm-up call
each is not timed. Ratio = median direct call time ÷ median pipeline call time (each call makes the same
B × n summaries; identical ones, when the seeds reproduce). Target: ratio ≥ 0.9. Run from bench/rig_suite.py
(it owns Ray and the rollout actor).
"""

from __future__ import annotations

import gc
import time

import numpy as np


def measure(rig, batches: list[int], rounds: dict[int, int]) -> dict:
    """``rounds[B]`` alternating direct/pipeline calls of ``B`` contexts each, per batch size B."""
    import ray

    from rlhf_cluster.generation import VllmEngine
    from rlhf_cluster.rl_step import rollout_requests

    cfg = rig.cfg
    t0 = time.perf_counter()
    engine = VllmEngine(cfg.models.summarizer, cfg.rollout, cfg.models.dtype, cfg.seed)
    direct_start_s = time.perf_counter() - t0
    kv = kv_cache_report(engine, cfg)
    out = {
        "setting": {
            "model": str(cfg.models.summarizer),
            "n_samples": cfg.rollout.n_samples,
            "max_new_tokens": cfg.rollout.max_new_tokens,
            "temperature": cfg.rollout.temperature,
            "prefix_caching": cfg.rollout.enable_prefix_caching,
            "rollout_actor_cpus": cfg.rollout_resources.num_cpus,
            "direct_engine_start_s": round(direct_start_s, 1),
        },
        "kv_cache": kv,
        "batches": [],
    }
    next_row = 0
    try:
        for B in batches:
            cells = {"direct": [], "pipeline": []}
            warmup = 1 if B == batches[0] else 0  # the first call of each engine is not timed
            for r in range(warmup + rounds[B]):
                rows = np.arange(next_row, next_row + B) % rig.requests.num_rows
                next_row += B
                req = rollout_requests(rig.requests, rows, cfg.seed, 10_000 + r)
                prompts, seeds = req.column("prompt_token_ids").to_pylist(), req.column("seed").to_pylist()

                def direct(prompts=prompts, seeds=seeds):
                    ts = time.perf_counter()
                    return engine.generate(prompts, seeds), time.perf_counter() - ts

                def pipeline(rows=rows, r=r):
                    ts = time.perf_counter()
                    req2 = rollout_requests(rig.requests, rows, cfg.seed, 10_000 + r)  # the pipeline builds its batch
                    return ray.get(rig.rollout.generate.remote(req2)), time.perf_counter() - ts

                if r % 2 == 0:  # ABBA order: neither side always runs first after the other
                    (samples, direct_s), (table, pipe_s) = direct(), pipeline()
                else:
                    (table, pipe_s), (samples, direct_s) = pipeline(), direct()
                if r < warmup:
                    continue
                d_tok = sum(len(s.token_ids) for per in samples for s in per)
                p_tok = sum(len(t) for t in table.column("summary_token_ids").to_pylist())
                same = [s.token_ids for per in samples for s in per] == table.column("summary_token_ids").to_pylist()
                cells["direct"].append({"s": direct_s, "summaries": sum(map(len, samples)), "tokens": d_tok})
                cells["pipeline"].append(
                    {"s": pipe_s, "summaries": table.num_rows, "tokens": p_tok, "same_tokens": same}
                )
            out["batches"].append(_summarize(B, cells))
            b = out["batches"][-1]
            print(
                f"[rollout] {B} contexts × {cfg.rollout.n_samples}: direct {b['direct_summaries_per_s']:.1f}/s, "
                f"pipeline {b['pipeline_summaries_per_s']:.1f}/s → ratio {b['ratio_summaries_per_s']:.3f} "
                f"(tokens/s ratio {b['ratio_tokens_per_s']:.3f}; identical samples in "
                f"{b['identical_rounds']}/{b['rounds']} rounds)",
                flush=True,
            )
        out["engine_modes"] = engine_modes(engine, cfg, direct_start_s, rig.requests, batches[0], rounds[batches[0]])
    finally:
        _shutdown(engine)
    return out


def engine_modes(engine, cfg, start_s: float, requests, contexts: int, rounds: int) -> dict:
    """The direct engine (its ``rollout.engine_in_process`` setting) against the same engine in the other
    mode (vLLM's separate engine process, or in process): start-up time, and the median of generate calls
    that alternate between the two (ABBA) on the same token ids and seeds, after a warm-up call each."""
    from rlhf_cluster.generation import VllmEngine
    from rlhf_cluster.rl_step import rollout_requests

    mine = "in_process" if cfg.rollout.engine_in_process else "separate"
    theirs = "separate" if mine == "in_process" else "in_process"
    t0 = time.perf_counter()
    other_cfg = cfg.rollout.model_copy(update={"engine_in_process": not cfg.rollout.engine_in_process})
    other = VllmEngine(cfg.models.summarizer, other_cfg, cfg.models.dtype, cfg.seed)
    times = {mine: [], theirs: [], "start_s": {mine: round(start_s, 2), theirs: round(time.perf_counter() - t0, 2)}}
    try:
        for r in range(1 + rounds):
            req = rollout_requests(requests, np.arange(contexts) % requests.num_rows, cfg.seed, 20_000 + r)
            prompts, seeds = req.column("prompt_token_ids").to_pylist(), req.column("seed").to_pylist()
            order = [(mine, engine), (theirs, other)][:: 1 if r % 2 == 0 else -1]
            for name, eng in order:
                ts = time.perf_counter()
                eng.generate(prompts, seeds)
                if r > 0:  # the first call of each is a warm-up
                    times[name].append(time.perf_counter() - ts)
    finally:
        _shutdown(other)
    out = {
        "contexts": contexts,
        "rounds": rounds,
        "start_s": times["start_s"],
        "generate_s": {k: round(_median(times[k]), 4) for k in (mine, theirs)},
    }
    out["generate_ratio_separate_over_in_process"] = out["generate_s"]["separate"] / out["generate_s"]["in_process"]
    print(
        f"[rollout] vLLM engine in process vs separate process: start {out['start_s']['in_process']:.1f} vs "
        f"{out['start_s']['separate']:.1f} s; generate {out['generate_s']['in_process']:.3f} vs "
        f"{out['generate_s']['separate']:.3f} s per call ({contexts} contexts)",
        flush=True,
    )
    return out


def _summarize(B: int, cells: dict) -> dict:
    d, p = cells["direct"], cells["pipeline"]
    ds, ps = sum(c["s"] for c in d), sum(c["s"] for c in p)
    dsum, psum = sum(c["summaries"] for c in d), sum(c["summaries"] for c in p)
    dtok, ptok = sum(c["tokens"] for c in d), sum(c["tokens"] for c in p)
    return {
        "contexts": B,
        "rounds": len(d),
        "direct_s": [round(c["s"], 4) for c in d],
        "pipeline_s": [round(c["s"], 4) for c in p],
        "direct_summaries_per_s": dsum / ds,
        "pipeline_summaries_per_s": psum / ps,
        "direct_tokens_per_s": dtok / ds,
        "pipeline_tokens_per_s": ptok / ps,
        # headline: medians of the per-call times (every call makes B × n summaries), robust to one noisy call
        "ratio_summaries_per_s": _median([c["s"] for c in d]) / _median([c["s"] for c in p]),
        "ratio_summaries_per_s_totals": (psum / ps) / (dsum / ds),
        "ratio_tokens_per_s": (ptok / ps) / (dtok / ds),
        "overhead_s_per_call": _median([c["s"] for c in p]) - _median([c["s"] for c in d]),
        "identical_rounds": sum(c["same_tokens"] for c in p),
        "target": 0.9,
    }


def _median(xs: list[float]) -> float:
    import statistics

    return statistics.median(xs)


def kv_cache_report(engine, cfg) -> dict:
    """What vLLM reserved for the KV cache vs what the config asked for (rollout.kv_cache_gib)."""
    import psutil

    cc = engine.llm.llm_engine.vllm_config.cache_config
    reserved = cc.kv_cache_memory_bytes
    return {
        "config_kv_cache_gib": cfg.rollout.kv_cache_gib,
        "vllm_kv_cache_memory_gib": round(reserved / 2**30, 4) if reserved else None,
        "sized_from_config": reserved == int(cfg.rollout.kv_cache_gib * 2**30),
        "num_blocks": cc.num_gpu_blocks,
        "block_size_tokens": cc.block_size,
        "token_capacity": (cc.num_gpu_blocks or 0) * cc.block_size,
        "host_ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "share_of_host_ram": round(reserved / psutil.virtual_memory().total, 4) if reserved else None,
        "note": "gpu_memory_utilization is not used on CPU (kv_cache_memory_bytes is set from rollout.kv_cache_gib)",
    }


def _shutdown(engine) -> None:
    try:
        engine.llm.llm_engine.engine_core.shutdown()
    except Exception as err:  # best effort: the process exits soon anyway
        print(f"[rollout] direct engine shutdown: {err}", flush=True)
    del engine
    gc.collect()

"""Weight sync: seconds per sync, bytes/s, and its share of the PLUS iteration it belongs to.

A sync is what jobs.plus does after each summarizer update: ``PolicyGroup.state_dict_bytes()`` (rank 0
gathers HF-named tensors and ``torch.save``s them; Ray brings the blob to the driver) →
``RolloutActor.update_weights.remote(blob, v)`` (Ray carries it to the actor; vLLM's workers reload it
through ``collective_rpc`` and the prefix cache is reset). bench/rig.py times the parts of every sync of
the PLUS iterations it runs; here they are summarised. The share is sync seconds ÷ the wall seconds of
the same iteration, measured together. Target: ≤ 5 %.
"""

from __future__ import annotations

from bench.common import median


def summarize(iterations: list[dict], label: str) -> dict:
    """Per-sync medians over ``iterations`` (from Rig.iteration; the first, warm-up iteration excluded)."""
    its = iterations[1:] if len(iterations) > 1 else iterations
    syncs = [it["sync"] for it in its]
    total = median(s["total_s"] for s in syncs)
    out = {
        "model": label,
        "iterations": len(its),
        "bytes": syncs[0]["bytes"],
        "mib": round(syncs[0]["bytes"] / 2**20, 2),
        "sync_s": total,
        "gather_s": median(s["gather_s"] for s in syncs),
        "push_and_load_s": median(s["push_and_load_s"] for s in syncs),
        "engine_load_s": median(s["engine_load_s"] for s in syncs),
        "transfer_s": median(s["push_and_load_s"] - s["engine_load_s"] for s in syncs),
        "bytes_per_s": syncs[0]["bytes"] / total if total else None,
        "iteration_s": median(it["wall_s"] for it in its),
        "share_of_iteration": median(it["sync"]["total_s"] / it["wall_s"] for it in its),
        "target_share": 0.05,
    }
    print(
        f"[weight_sync] {label}: {out['mib']} MiB in {total * 1e3:.0f} ms ({out['bytes_per_s'] / 2**20:.0f} MiB/s; "
        f"gather {out['gather_s'] * 1e3:.0f} ms, push {out['transfer_s'] * 1e3:.0f} ms, engine load "
        f"{out['engine_load_s'] * 1e3:.0f} ms) = {out['share_of_iteration']:.1%} of a {out['iteration_s']:.2f} s iteration "
        f"(target ≤ 5 %)",
        flush=True,
    )
    return out

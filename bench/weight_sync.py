"""Weight sync: seconds per sync, bytes/s, and its share of the PLUS iteration it belongs to.

A sync is what jobs.plus does after each summarizer update: ``PolicyGroup.state_dict_ref()`` (rank 0
gathers HF-named tensors and ``torch.save``s them into the object store) →
``RolloutActor.update_weights.remote(ref, v)`` (Ray carries the bytes from the store to the actor, not
through the driver; vLLM's workers reload it through ``collective_rpc`` and the prefix cache is reset).
``compare_paths`` times that path side by side with the former one (the driver fetches the bytes and sends
them on) and records the driver's peak allocation during each. bench/rig.py times the parts of every sync of
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
        f"{out['engine_load_s'] * 1e3:.0f} ms) = {out['share_of_iteration']:.1%} of a {out['iteration_s']:.2f} "
        "s iteration "
        f"(target ≤ 5 %)",
        flush=True,
    )
    return out


def compare_paths(rig, rounds: int, label: str) -> dict:
    """``rounds`` syncs by each path, alternating (ABBA), on the rig's current weights: medians of the sync
    time and of the driver's peak allocation, direct (rank 0 → rollout actor) vs via the driver."""
    cells = {"direct": [], "via_driver": []}
    for r in range(rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for via in order:
            cells["via_driver" if via else "direct"].append(rig.sync(via_driver=via))
    out = {"model": label, "rounds": rounds}
    for name, syncs in cells.items():
        out[name] = {
            "sync_s": median(s["total_s"] for s in syncs),
            "driver_peak_bytes": median(s["driver_peak_bytes"] for s in syncs),
        }
    out["time_ratio_direct_over_via_driver"] = out["direct"]["sync_s"] / out["via_driver"]["sync_s"]
    d, v = out["direct"], out["via_driver"]
    print(
        f"[weight_sync] {label}: direct {d['sync_s'] * 1e3:.0f} ms, driver peak "
        f"{d['driver_peak_bytes'] / 2**20:.2f} MiB | "
        f"via driver {v['sync_s'] * 1e3:.0f} ms, driver peak {v['driver_peak_bytes'] / 2**20:.2f} MiB "
        f"(time ratio {out['time_ratio_direct_over_via_driver']:.2f}, {rounds} rounds each)",
        flush=True,
    )
    return out

"""Arrow exchange: what moving batches as Arrow tables between the PLUS roles costs, as a share of the
iteration it belongs to.

Every table that crossed a process boundary in the rig's PLUS iterations (bench/rig.py records them)
is replayed, in the same Ray session, right after those iterations:

- transfer: ``sink.consume.remote(table)`` (driver → actor: serialise, object store, deserialise) and
  ``sink.echo`` (there and back, so the way back = echo − consume), each minus the same call with no
  payload — that fixed per-call cost is Ray's, paid by any remote call, and reported on its own;
- conversion: the Arrow ↔ Python / torch code each role runs on the table (the rollout actor's
  to_pydict / from_pydict, rl_step's token_tensor and policy_batch, the reference's and policy's
  encode_summaries / logprobs_table, the reward pairs' pair_table / to_pydict), timed on the same data.
  Tokenisation of reward inputs is model work, not exchange, and is left out.

How often each table crosses per iteration follows jobs.plus: requests →rollout; rollouts rollout→
driver→reference; reference logprobs →driver; reward pairs →RM (score) and →RM (train); scores →driver;
policy batch →policy. Share = Σ (transfer + conversion) ÷ the median wall time of the same iterations.
Target: ≤ 3 %.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch

from bench.common import median

REPEATS = 5


@ray.remote(num_cpus=0)
class Sink:
    """The far end of a replayed transfer: holds nothing, does nothing with the table."""

    def consume(self, table) -> int:
        return 0 if table is None else table.num_rows

    def echo(self, table):
        return table


def _timed(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times)


def transfer_costs(sink, table: pa.Table) -> dict:
    there = _timed(lambda: ray.get(sink.consume.remote(table)))
    both = _timed(lambda: ray.get(sink.echo.remote(table)))
    return {"to_actor_s": there, "round_trip_s": both, "bytes": table.nbytes}


def conversion_costs(tables: dict, rig) -> dict[str, float]:
    """Seconds of the Arrow ↔ Python/torch conversions each role runs on these tables, per iteration."""
    from jobs.plus import summary_pairs
    from rlhf_cluster.rl_step import token_tensor
    from rlhf_cluster.schema import REWARD_SCORE_SCHEMA, ROLLOUT_SCHEMA
    from rlhf_cluster.sequences import encode_summaries, logprobs_table, policy_batch
    from rlhf_cluster.tensors import pad_list_column

    req, ro, ref = tables["requests"], tables["rollouts"], tables["ref_logprobs"]
    rows = ro.to_pydict()
    adv = torch.randn(ro.num_rows)
    enc = encode_summaries(ro.column("prompt_token_ids"), ro.column("summary_token_ids"), rig.tokenizer.pad_token_id)
    lp = torch.zeros(enc.summary_ids.shape)
    pb = tables["policy_batch"]
    out = {
        "rollout actor: requests.to_pydict": _timed(lambda: req.to_pydict()),
        "rollout actor: samples → ROLLOUT table": _timed(lambda: pa.Table.from_pydict(rows, schema=ROLLOUT_SCHEMA)),
        "driver: token_tensor ×2 (old, ref logprobs)": _timed(
            lambda: (token_tensor(ro.column("summary_logprobs"), "a"), token_tensor(ref.column("logprobs"), "b"))
        ),
        "driver: policy_batch": _timed(lambda: policy_batch(ro, adv)),
        "reference: encode_summaries + logprobs_table": _timed(
            lambda: (
                encode_summaries(
                    ro.column("prompt_token_ids"), ro.column("summary_token_ids"), rig.tokenizer.pad_token_id
                ),
                logprobs_table(lp, enc.summary_mask),
            )
        ),
        "policy: encode_summaries + pad logprobs/advantages": _timed(
            lambda: (
                encode_summaries(
                    pb.column("prompt_token_ids"), pb.column("summary_token_ids"), rig.tokenizer.pad_token_id
                ),
                pad_list_column(pb.column("summary_logprobs"), 0.0, side="right"),
                pad_list_column(pb.column("advantages"), 0.0, side="right"),
            )
        ),
    }
    if "reward_pairs" in tables:
        pairs, scores = tables["reward_pairs"], _scores_like(tables["reward_pairs"], REWARD_SCORE_SCHEMA)
        examples = rig.train.slice(0, int(pc.max(ro.column("request_id")).as_py()) + 1)  # the iteration's batch shape
        out["driver: summary_pairs"] = _timed(lambda: summary_pairs(examples, ro))
        out["RM: pairs.to_pydict ×2 (score, train) + scores table"] = 2 * _timed(lambda: pairs.to_pydict()) + _timed(
            lambda: pa.Table.from_arrays(
                [pairs.column("user_id"), scores.column("r_chosen"), scores.column("r_rejected")],
                schema=REWARD_SCORE_SCHEMA,
            )
        )
    return out


def _scores_like(pairs: pa.Table, schema: pa.Schema) -> pa.Table:
    n = pairs.num_rows
    return pa.Table.from_arrays(
        [pairs.column("user_id"), pa.array(np.zeros(n, np.float32)), pa.array(np.zeros(n, np.float32))], schema=schema
    )


# (table, crossings per iteration, direction): "to" = driver → actor, "back" = actor → driver
CROSSINGS = [
    ("requests", "to"),
    ("rollouts", "back"),
    ("rollouts", "to"),
    ("ref_logprobs", "back"),
    ("reward_pairs", "to"),
    ("reward_scores", "back"),
    ("reward_pairs", "to"),
    ("policy_batch", "to"),
]


def measure(rig, iterations: list[dict], label: str) -> dict:
    """Replay the last iteration's tables (transfer + conversion) against the iterations' wall time."""
    from rlhf_cluster.schema import REWARD_SCORE_SCHEMA

    tables = dict(iterations[-1]["tables"])
    if "reward_pairs" in tables:
        tables["reward_scores"] = _scores_like(tables["reward_pairs"], REWARD_SCORE_SCHEMA)
    sink = Sink.remote()
    ray.get(sink.consume.remote(None))
    call_s = _timed(lambda: ray.get(sink.consume.remote(None)), repeats=20)
    per_table = {name: transfer_costs(sink, t) for name, t in tables.items()}
    ray.kill(sink)
    transfer, rows = 0.0, []
    for name, way in CROSSINGS:
        if name not in per_table:
            continue
        c = per_table[name]
        # to: (call + payload there) − call; back: (call + there + back) − (call + there)
        net = max(c["to_actor_s"] - call_s if way == "to" else c["round_trip_s"] - c["to_actor_s"], 0.0)
        transfer += net
        rows.append(
            {
                "table": name,
                "direction": "driver → actor" if way == "to" else "actor → driver",
                "rows": tables[name].num_rows,
                "kib": round(c["bytes"] / 1024, 1),
                "transfer_ms": round(net * 1e3, 3),
            }
        )
    conv = conversion_costs(tables, rig)
    its = iterations[1:] if len(iterations) > 1 else iterations
    wall = median(it["wall_s"] for it in its)
    calls = sum(1 for name, _ in CROSSINGS if name in per_table)
    out = {
        "model": label,
        "iteration_s": wall,
        "transfers": rows,
        "conversions_ms": {k: round(v * 1e3, 3) for k, v in conv.items()},
        "transfer_s": transfer,
        "conversion_s": sum(conv.values()),
        "ray_call_overhead_s": call_s,
        "calls_per_iteration": calls,
        "share_of_iteration": (transfer + sum(conv.values())) / wall,
        "share_incl_ray_call_overhead": (transfer + sum(conv.values()) + calls * call_s) / wall,
        "target_share": 0.03,
    }
    print(
        f"[arrow] {label}: transfer {transfer * 1e3:.1f} ms + conversion {out['conversion_s'] * 1e3:.1f} ms per "
        f"{wall:.2f} s iteration = {out['share_of_iteration']:.2%} (target ≤ 3 %); with Ray's fixed call cost "
        f"({call_s * 1e3:.2f} ms × {calls}) {out['share_incl_ray_call_overhead']:.2%}",
        flush=True,
    )
    return out

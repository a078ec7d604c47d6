"""A PLUS iteration the benchmarks can take apart: the same actors and steps as jobs/plus.py, held open.

``Rig`` starts the roles jobs.plus starts (rollout actor on vLLM, frozen reference, DeepSpeed policy
group, and — for reward="rm" — the DeepSpeed reward-model group) from a PlusConfig, and ``iteration``
runs one iteration with the shared RL step jobs.plus runs (rlhf_cluster.rl_step) and jobs.plus's reward
(summary_pairs, score_margins) under its phase names, so its timings mean what metrics.jsonl's mean. What
jobs.plus does not expose, the rig records: the weight sync split into gather (policy rank 0 → object
store), push + load (object store → rollout actor) and the engine's load time, the driver's peak
allocation during it (``sync(via_driver=True)``: the former path through the driver, for comparison),
and every Arrow table that crossed a process boundary (for bench/arrow_exchange.py to replay).

``iteration(..., reward="text")`` swaps the reward model for bench/text_reward.py (no RM scoring, no RM
update): the fixed reward of the GRPO side-by-side with TRL. The benchmarks do not validate.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from bench.text_reward import text_reward


class Rig:
    def __init__(self, cfg, with_rm: bool = True):
        import ray

        from actors.policy import PolicyGroup
        from actors.reference import ReferenceActor
        from actors.reward_model import RewardModelGroup
        from rlhf_cluster.data import read_split
        from rlhf_cluster.models import load_tokenizer
        from rlhf_cluster.prompts import build_requests
        from rlhf_cluster.ray_setup import actor_options

        self.cfg, self.version, self.ray = cfg, 0, ray
        m = cfg.models
        self.train = read_split(cfg.data.dir, cfg.train_split)
        self.tokenizer = load_tokenizer(m.summarizer)
        self.requests = build_requests(self.train, self.tokenizer, cfg.rollout, cfg.seed)
        t0 = time.perf_counter()
        self.rollout = self._start_rollout(cfg.rollout)
        self.reference = ReferenceActor.options(**actor_options(cfg.reference_resources)).remote(m.summarizer, m.dtype)
        self.policy = PolicyGroup(
            m.summarizer, cfg.policy, cfg.deepspeed, cfg.policy_resources, cfg.seed, cfg.policy.minibatch_size, m.dtype
        )
        self.rm = None
        if with_rm:
            self.rm = RewardModelGroup(
                m.reward_model, cfg.rm, cfg.deepspeed, cfg.rm_resources, cfg.seed, cfg.rollout_batch
            )
        ray.get([self.rollout.info.remote(), self.reference.info.remote()])
        self.startup_s = time.perf_counter() - t0

    def _start_rollout(self, rollout_cfg):
        from actors.rollout import RolloutActor
        from rlhf_cluster.ray_setup import actor_options

        m = self.cfg.models
        actor = RolloutActor.options(**actor_options(self.cfg.rollout_resources)).remote(
            m.summarizer, rollout_cfg, m.dtype, self.cfg.seed
        )
        self.ray.get(actor.info.remote())
        return actor

    def restart_rollout(self, **rollout_updates) -> float:
        """A new rollout engine with other rollout settings (e.g. max_new_tokens), carrying the current
        weights and version over; returns its start-up seconds."""
        t0 = time.perf_counter()
        self.ray.kill(self.rollout)
        self.cfg = self.cfg.model_copy(update={"rollout": self.cfg.rollout.model_copy(update=rollout_updates)})
        self.rollout = self._start_rollout(self.cfg.rollout)
        if self.version > 0:
            self.ray.get(self.rollout.update_weights.remote(self.policy.state_dict_ref(), self.version))
        return time.perf_counter() - t0

    def rows(self, it: int, users: int) -> np.ndarray:
        """Iteration ``it``'s training rows: jobs.plus's seeded epoch order, at ``users`` per iteration."""
        from rlhf_cluster.sampling import epoch_batches as user_batches

        for k, rows in enumerate(user_batches(self.train.num_rows, users, it, self.cfg.seed), 1):
            if k == it:
                return rows
        raise ValueError(it)

    def iteration(
        self,
        rows: np.ndarray,
        it: int,
        examples: pa.Table | None = None,
        requests: pa.Table | None = None,
        reward: str = "rm",
    ) -> dict:
        """One PLUS iteration on ``rows`` (of ``examples`` / ``requests``: default the train split), through
        the shared RL step (rlhf_cluster.rl_step) as jobs.plus runs it.

        Returns ``{"wall_s", "phases": {name: s}, "sync": {...}, "tables": {name: pa.Table}, ...}``.
        """
        from jobs.plus import score_margins, summary_pairs
        from rlhf_cluster.rl_step import Roles, experience, rollout_requests, sample, update
        from rlhf_cluster.sequences import policy_batch

        cfg = self.cfg
        roles = Roles(self.rollout, self.reference, self.policy)
        examples = self.train if examples is None else examples
        requests_all = self.requests if requests is None else requests
        t: dict[str, float] = {}
        tables: dict[str, pa.Table] = {}
        start = time.perf_counter()
        use_rm = reward == "rm"
        if use_rm and self.rm is None:
            raise ValueError("reward='rm' needs a Rig started with_rm=True")
        with _phase("generate", t):
            req = rollout_requests(requests_all, rows, cfg.seed, it)
            rollouts = sample(roles, req, self.version)
        tables.update(requests=req, rollouts=rollouts)
        with _phase("score", t):
            if use_rm:
                tables["reward_pairs"] = summary_pairs(examples.take(rows), rollouts)
                score = F.logsigmoid(torch.as_tensor(score_margins(self.rm, tables["reward_pairs"])))
            else:
                score = torch.tensor([text_reward(s) for s in rollouts.column("summary_text").to_pylist()])
        exp = experience(cfg.policy, roles, rollouts, score, t)
        tables.update(ref_logprobs=exp.reference, policy_batch=policy_batch(rollouts, exp.advantages))
        update(cfg.policy, roles, exp, cfg.seed + it, t, "train_summarizer", train_policy=True)
        with _phase("train_reward_model", t):
            for _ in range(cfg.rm_updates_per_iter if use_rm else 0):
                self.rm.train_step(tables["reward_pairs"])
        with _phase("sync_weights", t):
            sync = self.sync()
        t = {k.replace(" ", "_"): v for k, v in t.items()}
        return {
            "wall_s": time.perf_counter() - start,
            "phases": t,
            "sync": sync,
            "tables": tables,
            "summaries": rollouts.num_rows,
            "summary_tokens_mean": float(exp.mask.sum(1).float().mean()),
            "prompt_tokens_mean": float(np.mean([len(p) for p in req.column("prompt_token_ids").to_pylist()])),
            "reward_mean": float(score.mean()),
        }

    def sync(self, via_driver: bool = False) -> dict:
        """Policy → rollout actor as jobs.plus syncs (rank 0's object reference handed to the rollout
        actor: the bytes skip the driver), split into its parts: gather (rank 0 serialises into the object
        store), push + load (the store → the actor, the engine's reload). ``via_driver``: the former path,
        for comparison — the driver fetches the bytes and sends them on. ``driver_peak_bytes``: the
        driver's peak Python allocation during the sync (tracemalloc)."""
        import tracemalloc

        tracemalloc.start()
        t0 = time.perf_counter()
        ref = self.policy.state_dict_ref()
        self.ray.wait([ref], fetch_local=False)
        payload = self.ray.get(ref) if via_driver else ref
        t1 = time.perf_counter()
        info = self.ray.get(self.rollout.update_weights.remote(payload, self.version + 1))
        t2 = time.perf_counter()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        self.version = info["weight_version"]
        return {
            "bytes": info["bytes"],
            "gather_s": t1 - t0,
            "push_and_load_s": t2 - t1,
            "engine_load_s": info["seconds"],
            "total_s": t2 - t0,
            "driver_peak_bytes": peak,
            "via_driver": via_driver,
        }

    def shutdown(self) -> None:
        for group in (self.policy, self.rm):
            if group is not None:
                group.shutdown()
        for actor in (self.rollout, self.reference):
            self.ray.kill(actor)


class _phase:
    """Times a block into ``timings[name]`` (jobs.plus's phase names, underscored as in metrics.jsonl)."""

    def __init__(self, name: str, timings: dict):
        self.name, self.timings = name, timings

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.t0


def run_iterations(rig: Rig, n: int, users: int, first_it: int = 1, **kw) -> list[dict]:
    """``n`` iterations at ``users`` contexts each (jobs.plus's data order), results in order; each printed."""
    out = []
    for it in range(first_it, first_it + n):
        out.append(rig.iteration(rig.rows(it, users), it, **kw))
        phases = ", ".join(f"{k} {v:.2f}" for k, v in out[-1]["phases"].items())
        print(f"[rig] iteration {it}: {out[-1]['wall_s']:.2f} s = {phases}", flush=True)
    return out

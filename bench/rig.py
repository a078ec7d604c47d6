"""A PLUS iteration the benchmarks can take apart: the same actors and steps as jobs/plus.py, held open.

``Rig`` starts the roles jobs.plus starts (rollout actor on vLLM, frozen reference, DeepSpeed policy
group, and — for reward="rm" — the DeepSpeed reward-model group) from a PlusConfig, and ``iteration``
runs one iteration with jobs.plus's own functions (rollout_requests, summary_pairs, score_margins,
token_tensor, advantages_of, train_minibatches) and its phase names, so its timings mean what
metrics.jsonl's mean. What jobs.plus does not expose, the rig records: the weight sync split into
gather (policy → driver), push + load (driver → rollout actor) and the engine's load time, and every
Arrow table that crossed a process boundary (for bench/arrow_exchange.py to replay).

``iteration(..., reward="text")`` swaps the reward model for bench/text_reward.py (no RM scoring, no RM
update): the fixed reward of the GRPO side-by-side with TRL. The validation engine of jobs.plus is not started (the
benchmarks do not validate).
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
        self.blob: bytes | None = None

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
        if self.blob is not None:
            self.ray.get(self.rollout.update_weights.remote(self.blob, self.version))
        return time.perf_counter() - t0

    def rows(self, it: int, users: int) -> np.ndarray:
        """Iteration ``it``'s training rows: jobs.plus's seeded epoch order, at ``users`` per iteration."""
        from jobs.plus import user_batches

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
        """One PLUS iteration on ``rows`` (of ``examples`` / ``requests``: default the train split).

        Returns ``{"wall_s", "phases": {name: s}, "sync": {...}, "tables": {name: pa.Table}, ...}``.
        """
        from jobs.plus import (
            advantages_of,
            rollout_requests,
            score_margins,
            summary_pairs,
            token_tensor,
            train_minibatches,
        )
        from rlhf_cluster.losses import kl_penalty, token_rewards
        from rlhf_cluster.sequences import policy_batch

        ray, cfg = self.ray, self.cfg
        examples = self.train if examples is None else examples
        requests_all = self.requests if requests is None else requests
        t: dict[str, float] = {}
        tables: dict[str, pa.Table] = {}
        start = time.perf_counter()
        batch = examples.take(rows)
        with _phase("generate", t):
            req = rollout_requests(requests_all, rows, cfg.seed, it)
            rollouts = ray.get(self.rollout.generate.remote(req, min_weight_version=self.version))
        tables.update(requests=req, rollouts=rollouts)
        use_rm = reward == "rm"
        if use_rm and self.rm is None:
            raise ValueError("reward='rm' needs a Rig started with_rm=True")
        with _phase("score", t):
            if use_rm:
                pairs = summary_pairs(batch, rollouts)
                margins = torch.as_tensor(score_margins(self.rm, pairs))
                score = F.logsigmoid(margins)
                tables["reward_pairs"] = pairs
            else:
                score = torch.tensor([text_reward(s) for s in rollouts.column("summary_text").to_pylist()])
        with _phase("reference", t):
            old_lp, mask = token_tensor(rollouts.column("summary_logprobs"), "summary_logprobs")
            ref_table = ray.get(self.reference.logprobs.remote(rollouts))
            ref_lp, _ = token_tensor(ref_table.column("logprobs"), "ref logprobs")
            kl = kl_penalty(old_lp, ref_lp, cfg.policy.kl_estimator)
        tables["ref_logprobs"] = ref_table
        with _phase("advantages", t):
            rewards = token_rewards(score, kl, mask, cfg.policy.kl_coef, cfg.policy.reward_clip)
            adv, _ = advantages_of(cfg, rollouts, rewards, mask)
        with _phase("train_summarizer", t):
            pbatch = policy_batch(rollouts, adv)
            train_minibatches(cfg, self.policy, pbatch, cfg.seed + it, "policy")
        tables["policy_batch"] = pbatch
        with _phase("train_reward_model", t):
            if use_rm:
                for _ in range(cfg.rm_updates_per_iter):
                    self.rm.train_step(tables["reward_pairs"])
        with _phase("sync_weights", t):
            sync = self.sync()
        wall = time.perf_counter() - start
        return {
            "wall_s": wall,
            "phases": t,
            "sync": sync,
            "tables": tables,
            "summaries": rollouts.num_rows,
            "summary_tokens_mean": float(mask.sum(1).float().mean()),
            "prompt_tokens_mean": float(np.mean([len(p) for p in req.column("prompt_token_ids").to_pylist()])),
            "reward_mean": float(score.mean()),
        }

    def sync(self) -> dict:
        """Policy → rollout actor, as jobs.plus syncs, split into its parts."""
        t0 = time.perf_counter()
        self.blob = self.policy.state_dict_bytes()
        t1 = time.perf_counter()
        info = self.ray.get(self.rollout.update_weights.remote(self.blob, self.version + 1))
        t2 = time.perf_counter()
        self.version = info["weight_version"]
        return {
            "bytes": len(self.blob),
            "gather_s": t1 - t0,
            "push_and_load_s": t2 - t1,
            "engine_load_s": info["seconds"],
            "total_s": t2 - t0,
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

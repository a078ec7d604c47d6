"""One online RL step of a policy on Ray actors, shared by every loop that trains a policy: the PLUS
summarizer (jobs/plus.py) and the stage-2 response policy. A loop reads as

    rollouts = sample(roles, requests, version)                  # generate
    score    = <the loop's own reward of each rollout>            # score
    exp      = experience(cfg, roles, rollouts, score, t)         # reference, [values], advantages
    metrics  = update(cfg, roles, exp, seed, t, ...)              # train policy, [train critic]
    <what the loop adds: PLUS trains its reward model here>
    version  = sync_weights(roles, version, t)                    # sync weights

Each function times its phases into ``t`` under the names metrics.jsonl reports (``time_<phase>``).
The roles are duck-typed handles (``actors.rollout.RolloutActor``, ``actors.reference.ReferenceActor``,
``actors.policy.PolicyGroup``, ``actors.critic.CriticGroup``): this module imports no actor.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import ray
import torch

from rlhf_cluster.config import PolicyTrainConfig
from rlhf_cluster.losses import (
    gae,
    grpo_advantages,
    kl_penalty,
    masked_sum,
    masked_whiten,
    rloo_advantages,
    token_rewards,
)
from rlhf_cluster.schema import ROLLOUT_REQUEST_SCHEMA
from rlhf_cluster.sequences import critic_batch, policy_batch
from rlhf_cluster.tensors import pad_list_column
from rlhf_cluster.timing import phase


@dataclasses.dataclass
class Roles:
    """The actors one policy's RL step drives (critic: PPO only). ``start_rollout`` makes a fresh rollout
    actor like the first: with it, ``sample`` replaces a rollout actor whose engine died (and counts it in
    ``rollout_restarts``); without it, such a failure stops the job."""

    rollout: Any
    reference: Any
    policy: Any
    critic: Any = None
    start_rollout: Callable[[], Any] | None = None
    rollout_restarts: int = 0
    synced_version: int = 0  # the weight version last loaded into the rollout actor (sync_weights, push_weights)


T = TypeVar("T")
MAX_ROLLOUT_RESTARTS = 3  # per sample call: a rollout engine that keeps dying is a failure, not a fault


@dataclasses.dataclass
class Experience:
    """One rollout batch made ready for the update. B rows (sampled sequences), T their longest length."""

    rollouts: pa.Table  # ROLLOUT_SCHEMA, B rows
    score: torch.Tensor  # [B] the loop's reward of each sequence (before clipping)
    mask: torch.Tensor  # [B, T] 1 on sampled tokens
    kl: torch.Tensor  # [B, T] per-token KL estimate of the sampler vs the frozen reference
    rewards: torch.Tensor  # [B, T] −kl_coef·KL per token, the clipped score added on the last
    advantages: torch.Tensor  # [B] (grpo / rloo) or [B, T] (ppo, whitened)
    returns: torch.Tensor  # [B] sequence returns, or [B, T] GAE returns (the critic's targets)
    values: torch.Tensor | None = None  # [B, T] the critic's values (ppo)
    reference: pa.Table | None = None  # TOKEN_LOGPROBS_SCHEMA rows the reference returned


# ------------------------------------------------------------------------------------ generate


def rollout_requests(requests: pa.Table, rows: np.ndarray, seed: int, iteration: int) -> pa.Table:
    """The iteration's requests with per-request seeds from (seed, iteration, row): a rerun samples the same."""
    seeds = [(seed * 1_000_003 + iteration) * 1_000_003 + int(r) for r in rows]
    picked = requests.take(rows)
    columns = [
        pa.array(range(len(rows)), pa.int64()),
        picked.column("user_id"),
        picked.column("prompt_token_ids"),
        pa.array(seeds, pa.int64()),
    ]
    return pa.Table.from_arrays(columns, schema=ROLLOUT_REQUEST_SCHEMA)


def sample(roles: Roles, requests: pa.Table, version: int) -> pa.Table:
    """ROLLOUT_SCHEMA rows from the rollout actor, which must hold weight ``version`` (or within its
    ``max_weight_staleness``); a dead rollout engine is replaced first (``on_rollout``)."""
    return on_rollout(roles, lambda actor: ray.get(actor.generate.remote(requests, min_weight_version=version)))


def greedy(roles: Roles, requests: pa.Table) -> pa.Table:
    """One argmax completion per request (validation), from the weights last synced; like ``sample``, it
    survives a dead rollout engine."""
    return on_rollout(roles, lambda actor: ray.get(actor.generate.remote(requests, greedy=True)))


def on_rollout(roles: Roles, call: Callable[[Any], T]) -> T:
    """``call(rollout actor)``, surviving the actor's or its engine process's death (``engine_died``): a
    new actor is started (``roles.start_rollout``), given the policy's weights as ``roles.synced_version``
    — a loop generates right after a sync, so the policy holds exactly that version — checked to hold
    it, and called again: per-request seeds make its answer the one the dead actor would have given.
    At most MAX_ROLLOUT_RESTARTS times per call; then, or without ``start_rollout``, the error stops the job.
    """
    for attempt in range(MAX_ROLLOUT_RESTARTS + 1):
        try:
            return call(roles.rollout)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
            if roles.start_rollout is None or attempt == MAX_ROLLOUT_RESTARTS or not engine_died(err):
                raise
            print(
                f"notice: the rollout actor failed ({type(err).__name__}: {_first_line(err)}); restarting it "
                f"with weight version {roles.synced_version} and generating the batch again",
                file=sys.stderr,
                flush=True,
            )
            restart_rollout(roles)
    raise AssertionError("unreachable")


def engine_died(err: Exception) -> bool:
    """Whether a rollout call failed because the actor or its engine process died (a fault to recover
    from), not because of the call itself (a bad request, stale weights)."""
    if isinstance(err, ray.exceptions.RayActorError):
        return True
    cause = getattr(err, "cause", None)
    return type(cause).__name__ in ("EngineDeadError", "EngineGenerateError") or "EngineDeadError" in str(err)


def restart_rollout(roles: Roles) -> None:
    """Replace the rollout actor with a fresh one holding the policy's weights as ``roles.synced_version``."""
    try:
        ray.kill(roles.rollout, no_restart=True)
    except Exception:  # noqa: BLE001 - already dead is fine
        pass
    roles.rollout, version = roles.start_rollout(), roles.synced_version
    if version > 0:
        push_weights(roles, version)
    held = ray.get(roles.rollout.info.remote())["weight_version"]
    if held != version:
        raise RuntimeError(f"restarted rollout actor holds weight version {held}, expected {version}")
    roles.rollout_restarts += 1


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200]


def check_on_policy(rollouts: pa.Table, version: int, iteration: int) -> None:
    """A synchronous loop's invariant: every rollout of the iteration was sampled by weight ``version``."""
    stamped = set(rollouts.column("weight_version").to_pylist())
    if stamped != {version}:
        raise RuntimeError(
            f"iteration {iteration}: rollouts stamped with weight versions {stamped}, expected {version}"
        )


# ---------------------------------------------------------------------------------- experience


def token_tensor(column, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A list<float> column right-padded to [B, T] with its mask (the summary layout of sequences.py)."""
    return pad_list_column(column, 0.0, side="right", dtype=torch.float32, name=name)


def advantages_of(cfg: PolicyTrainConfig, rollouts: pa.Table, rewards: torch.Tensor, mask, values=None) -> tuple:
    """(advantages, returns) from per-token rewards [B, T].

    grpo / rloo: the sequence return Σ_t r_t, compared within each request's group → advantages [B],
    returns [B]. ppo: GAE over the tokens with the critic's values → advantages [B, T] whitened over the
    batch, returns [B, T] (the critic's targets, not whitened).
    """
    if cfg.algorithm == "ppo":
        adv, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        return masked_whiten(adv, mask), returns
    returns = masked_sum(rewards, mask, dim=1)
    groups = torch.from_numpy(rollouts.column("request_id").to_numpy().copy())
    if cfg.algorithm == "rloo":
        return rloo_advantages(returns, groups), returns
    return grpo_advantages(returns, groups, cfg.advantage_eps, cfg.scale_advantages), returns


def experience(cfg: PolicyTrainConfig, roles: Roles, rollouts: pa.Table, score: torch.Tensor, t: dict) -> Experience:
    """Reference logprobs → per-token KL; (ppo) the critic's values; token rewards → advantages."""
    with phase("reference", t, quiet=True):
        old_lp, mask = token_tensor(rollouts.column("summary_logprobs"), "summary_logprobs")
        reference = ray.get(roles.reference.logprobs.remote(rollouts))
        ref_lp, _ = token_tensor(reference.column("logprobs"), "ref logprobs")
        kl = kl_penalty(old_lp, ref_lp, cfg.kl_estimator)
    values = None
    if cfg.algorithm == "ppo":
        with phase("values", t, quiet=True):
            values, _ = token_tensor(roles.critic.values(rollouts).column("values"), "values")
    with phase("advantages", t, quiet=True):
        rewards = token_rewards(score, kl, mask, cfg.kl_coef, cfg.reward_clip)
        adv, returns = advantages_of(cfg, rollouts, rewards, mask, values)
    return Experience(rollouts, score, mask, kl, rewards, adv, returns, values, reference)


# -------------------------------------------------------------------------------------- update


def train_minibatches(cfg: PolicyTrainConfig, group, batch: pa.Table, seed: int, prefix: str) -> dict:
    """cfg.epochs passes over the batch in shuffled minibatches (policy or critic group); the steps'
    metrics averaged, counts and timings left out, names prefixed."""
    rng, size, steps = np.random.default_rng(seed), cfg.minibatch_size, []
    for _ in range(cfg.epochs):
        order = rng.permutation(batch.num_rows)
        steps += [group.train_step(batch.take(order[s : s + size])) for s in range(0, batch.num_rows, size)]
    keys = [k for k in steps[0] if not k.startswith("n_") and k not in ("seconds", "lr", "ratio_mean")]
    return {f"{prefix}_{k}": float(np.mean([m[k] for m in steps])) for k in keys}


def update(
    cfg: PolicyTrainConfig, roles: Roles, exp: Experience, seed: int, t: dict, policy_phase: str, train_policy: bool
) -> dict:
    """PPO-clip steps of the policy (unless ``train_policy`` is false: a frozen policy or the critic's
    warm-up), then (ppo) the critic's value steps; their metrics."""
    metrics: dict[str, float] = {}
    with phase(policy_phase, t, quiet=True):
        if train_policy:
            metrics.update(
                train_minibatches(cfg, roles.policy, policy_batch(exp.rollouts, exp.advantages), seed, "policy")
            )
    if roles.critic is not None:
        with phase("train critic", t, quiet=True):
            batch = critic_batch(exp.rollouts, exp.values, exp.returns)
            metrics.update(train_minibatches(cfg, roles.critic, batch, seed, "critic"))
    return metrics


def sync_weights(roles: Roles, version: int, t: dict, changed: bool = True) -> int:
    """The policy's weights → the rollout actor as ``version + 1`` (when ``changed``); the new version.
    The bytes go from policy rank 0 to the rollout actor through the object store, not the driver."""
    with phase("sync weights", t, quiet=True):
        if changed:
            ref = roles.policy.state_dict_ref()
            version = ray.get(roles.rollout.update_weights.remote(ref, version + 1))["weight_version"]
            roles.synced_version = version
    return version


def push_weights(roles: Roles, version: int) -> None:
    """Load the policy's current weights into the rollout actor under ``version`` (a resumed run)."""
    ray.get(roles.rollout.update_weights.remote(roles.policy.state_dict_ref(), version))
    roles.synced_version = version


def step_metrics(cfg: PolicyTrainConfig, exp: Experience, sampled_by: int, version: int, t: dict) -> dict:
    """What every RL step logs: reward (clipped score), KL, return, |advantage|, sequence length, share
    stopped at EOS, weight versions, and each phase's seconds as ``time_<phase>``."""
    mask, adv = exp.mask, exp.advantages
    reasons = exp.rollouts.column("finish_reason").to_pylist()
    return {
        "reward": float(exp.score.clamp(-cfg.reward_clip, cfg.reward_clip).mean()),
        "kl": float(masked_sum(exp.kl, mask) / mask.sum()),
        "return_mean": float(masked_sum(exp.rewards, mask, dim=1).mean()),
        "advantage_abs": float(masked_sum(adv.abs(), mask) / mask.sum() if adv.dim() == 2 else adv.abs().mean()),
        "summary_tokens": float(mask.sum(1).float().mean()),
        "stopped_at_eos": float(np.mean([r == "stop" for r in reasons])),
        "rollout_weight_version": float(sampled_by),
        "weight_version": float(version),
        **{f"time_{k.replace(' ', '_')}": v for k, v in t.items()},
    }

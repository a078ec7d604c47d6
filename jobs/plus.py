"""PLUS online co-adaptation (Nam et al. 2025, arXiv:2507.13579): summarizer (GRPO/RLOO/PPO) ⇄ reward model (BT).

    python -m jobs.plus --config configs/plus_pets.yaml [key=value ...]
    python -m jobs.plus --resume RUN_DIR [iterations=N]       # continue exactly from RUN_DIR/checkpoint

Roles (Ray actors): a rollout actor samples summaries z ~ π(· | user context) (vLLM); a DeepSpeed group
trains π; a frozen reference gives the per-token KL; a DeepSpeed group trains the reward model
r(prompt, response | z); for PPO a DeepSpeed group trains the critic. One iteration, each phase timed and
logged (metrics.jsonl, tb/):

  generate    users_per_iter training examples (seeded, epoch-shuffled) → n_samples summaries each
  score       each z on a HELD-OUT pair of the same user (the example's own target pair, never a context
              pair): R = log σ(r(chosen|z) − r(rejected|z)), clipped to ±policy.reward_clip
  reference   log π_ref of the summary tokens → per-token KL vs the rollout logprobs
  values      (ppo) the critic's V per summary token
  advantages  token rewards (−kl_coef·KL per token, R on the last) → GRPO/RLOO over each group, or GAE
  train summarizer    PPO-clip steps on the batch (policy.epochs × minibatches)   [freeze_summarizer]
  train critic        (ppo) clipped value-loss steps on the GAE returns
  train reward model  rm_updates_per_iter BT steps on the same z, each with pairs of the same user (rm_pairs=user:
                      fresh held-out pairs per step; target: the scored pairs)  [freeze_reward_model]
  sync weights        policy → rollout actor, weight version + 1

Every eval_every iterations: greedy summaries of validation examples → RM accuracy (all / contested /
agreed); the best (on validation "all") RM + summarizer are kept in run_dir/best/. Every checkpoint_every
iterations: run_dir/checkpoint/ (each group's weights, optimizer, LR schedule and RNG; the weight version,
best, timings; the data position is the iteration: the order is replayed from the seed), from which
``--resume`` continues with the same metrics as an uninterrupted run. The end writes run_dir/last/ and
run_dir/train_summary.json; run_dir/evaluate/ is a TrainRMConfig view of the run that
``python -m jobs.evaluate --run run_dir/evaluate`` reads (best RM, summaries by the best summarizer).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from rlhf_cluster.cli import dump_yaml, parse_config, prepare_run_dir, resume_argv
from rlhf_cluster.config import PlusConfig, TrainRMConfig
from rlhf_cluster.data import draw_same_user_rows, read_split, same_user_pair_rows
from rlhf_cluster.data import epoch_batches as user_batches
from rlhf_cluster.losses import (
    gae,
    grpo_advantages,
    kl_penalty,
    masked_sum,
    masked_whiten,
    rloo_advantages,
    token_rewards,
)
from rlhf_cluster.metrics import MetricsLogger, accuracy_by_subset
from rlhf_cluster.reward_model import pair_table
from rlhf_cluster.schema import ROLLOUT_REQUEST_SCHEMA
from rlhf_cluster.sequences import critic_batch, policy_batch
from rlhf_cluster.tensors import pad_list_column
from rlhf_cluster.timing import phase

# ------------------------------------------------------------------------------------------ batches


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


def summary_pairs(examples: pa.Table, rollouts: pa.Table) -> pa.Table:
    """REWARD_PAIR rows, one per sampled summary: its example's target pair, conditioned on the summary."""
    return pair_table(examples.take(rollouts.column("request_id")), rollouts.column("summary_text").to_pylist())


def reward_model_pairs(
    cfg: PlusConfig,
    train: pa.Table,
    rows: np.ndarray,
    rollouts: pa.Table,
    scored: pa.Table,
    candidates: list[np.ndarray] | None,
    rng: np.random.Generator,
) -> pa.Table:
    """One reward-model update's REWARD_PAIR batch: every sampled summary with a pair of its user
    (rm_pairs=user: drawn from `candidates`, see rlhf_cluster.data.same_user_pair_rows; target: the scored pair)."""
    if cfg.rm_pairs == "target":
        return scored
    own = np.asarray(rows)[rollouts.column("request_id").to_numpy()]
    return pair_table(
        train.take(draw_same_user_rows(candidates, own, rng)), rollouts.column("summary_text").to_pylist()
    )


def score_margins(rm_group, pairs: pa.Table) -> np.ndarray:
    """r(chosen | z) − r(rejected | z) per row."""
    scores = rm_group.score(pairs)
    return scores.column("r_chosen").to_numpy() - scores.column("r_rejected").to_numpy()


def token_tensor(column, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A list<float> column right-padded to [B, T] with its mask (the summary layout of sequences.py)."""
    return pad_list_column(column, 0.0, side="right", dtype=torch.float32, name=name)


def advantages_of(cfg: PlusConfig, rollouts: pa.Table, rewards: torch.Tensor, mask, values=None) -> tuple:
    """(advantages, returns) from per-token rewards [B, T].

    grpo / rloo: the sequence return Σ_t r_t, compared within each context's group → advantages [B],
    returns [B]. ppo: GAE over the tokens with the critic's values → advantages [B, T] whitened over the
    batch, returns [B, T] (the critic's targets, not whitened).
    """
    if cfg.policy.algorithm == "ppo":
        adv, returns = gae(rewards, values, mask, cfg.policy.gamma, cfg.policy.lam)
        return masked_whiten(adv, mask), returns
    returns = masked_sum(rewards, mask, dim=1)
    groups = torch.from_numpy(rollouts.column("request_id").to_numpy().copy())
    if cfg.policy.algorithm == "rloo":
        return rloo_advantages(returns, groups), returns
    return grpo_advantages(returns, groups, cfg.policy.advantage_eps, cfg.policy.scale_advantages), returns


def train_minibatches(cfg: PlusConfig, group, batch: pa.Table, seed: int, prefix: str) -> dict:
    """policy.epochs passes over the batch in shuffled minibatches (policy or critic group); the steps'
    metrics averaged, counts and timings left out, names prefixed."""
    rng, size, steps = np.random.default_rng(seed), cfg.policy.minibatch_size, []
    for _ in range(cfg.policy.epochs):
        order = rng.permutation(batch.num_rows)
        steps += [group.train_step(batch.take(order[s : s + size])) for s in range(0, batch.num_rows, size)]
    keys = [k for k in steps[0] if not k.startswith("n_") and k not in ("seconds", "lr", "ratio_mean")]
    return {f"{prefix}_{k}": float(np.mean([m[k] for m in steps])) for k in keys}


# ------------------------------------------------------------------------------------ checkpoints


def save_checkpoint(run_dir: Path, iteration: int, groups: dict, driver: dict) -> None:
    """run_dir/checkpoint/: each group's DeepSpeed state under <role>/iter<k>, then state.json (written
    atomically, last: it names the complete tag), then older tags removed. A crash at any point leaves
    state.json pointing at a complete checkpoint."""
    import shutil

    ckpt, tag = run_dir / "checkpoint", f"iter{iteration:06d}"
    for role, group in groups.items():
        group.save_state(str(ckpt / role), tag)
    tmp = ckpt / "state.json.tmp"
    tmp.write_text(json.dumps({**driver, "iteration": iteration, "tag": tag}, indent=2))
    tmp.replace(ckpt / "state.json")
    for role in groups:
        for old in (ckpt / role).glob("iter*"):
            if old.is_dir() and old.name != tag:
                shutil.rmtree(old, ignore_errors=True)


def read_checkpoint(run_dir: Path, cfg: PlusConfig) -> dict:
    """The driver state of run_dir/checkpoint/state.json, checked against the resumed config."""
    path = run_dir / "checkpoint" / "state.json"
    if not path.is_file():
        raise SystemExit(
            f"--resume {run_dir}: no checkpoint ({path} missing); the run stopped before its "
            f"first checkpoint (checkpoint_every={cfg.checkpoint_every})"
        )
    state = json.loads(path.read_text())
    for key, now in (("num_ranks", cfg.deepspeed.num_ranks), ("algorithm", cfg.policy.algorithm)):
        if state[key] != now:
            raise SystemExit(f"--resume {run_dir}: checkpoint has {key}={state[key]!r}, config says {now!r}")
    if state["iteration"] >= cfg.iterations:
        raise SystemExit(
            f"--resume {run_dir}: the checkpoint is at iteration {state['iteration']}, the run has "
            f"iterations={cfg.iterations}; raise iterations (e.g. iterations={2 * cfg.iterations}) to go on"
        )
    return state


# ------------------------------------------------------------------------------------- validation


def validate(eval_actor, blob: bytes | None, version: int, val: pa.Table, val_requests: pa.Table, rm_group) -> tuple:
    """Greedy summaries by the current summarizer → RM accuracy by subset; (metrics, summaries)."""
    import ray

    from jobs.summarize import generate_all

    if blob is not None:
        ray.get(eval_actor.update_weights.remote(blob, version))
    rollouts = generate_all(eval_actor, val_requests, batch_size=val_requests.num_rows, progress=False)
    margins = score_margins(rm_group, summary_pairs(val, rollouts))
    contested = val.column("contested").to_numpy(zero_copy_only=False)
    acc = accuracy_by_subset(margins, np.zeros_like(margins), contested)
    return acc, rollouts.column("summary_text").to_pylist()


def show_summaries(val: pa.Table, summaries: list[str], k: int) -> None:
    seen = set()
    for user, text, truth in zip(
        val.column("user_id").to_pylist(), summaries, val.column("user_description").to_pylist()
    ):
        if user in seen or len(seen) >= k:
            continue
        seen.add(user)
        print(f"  - user {user}: {text!r}\n      (truth: {truth})", flush=True)


def run_label(cfg: PlusConfig) -> str:
    """The run's label in comparison tables: PLUS, its algorithm and which side was frozen."""
    frozen = [side for side, on in (("summarizer", cfg.freeze_summarizer), ("RM", cfg.freeze_reward_model)) if on]
    return f"PLUS ({cfg.policy.algorithm}" + "".join(f", frozen {f}" for f in frozen) + ")"


def write_evaluate_view(cfg: PlusConfig, run_dir: Path) -> Path:
    """run_dir/evaluate/: a TrainRMConfig (summary conditioning, greedy best summarizer) + links to best/,
    last/ reward models, so that jobs.evaluate scores this run as it scores a train_rm run."""
    view = run_dir / "evaluate"
    view.mkdir(exist_ok=True)
    greedy = cfg.rollout.model_copy(update={"temperature": 0.0, "n_samples": 1, "backend": cfg.eval_backend})
    rm_cfg = TrainRMConfig(
        run_dir=str(view),
        name=run_label(cfg),
        seed=cfg.seed,
        data=cfg.data,
        train_split=cfg.train_split,
        models=cfg.models.model_copy(update={"summarizer": str((run_dir / "best" / "summarizer").resolve())}),
        rm=cfg.rm.model_copy(update={"batch_size": cfg.rollout_batch}),
        deepspeed=cfg.deepspeed,
        ray=cfg.ray,
        rank_resources=cfg.rm_resources,
        rollout=greedy,
        rollout_resources=cfg.rollout_resources,
    )
    (view / "config.yaml").write_text(dump_yaml(rm_cfg))
    for name in ("best", "last"):
        link = view / name
        if not link.is_symlink() and (run_dir / name / "reward_model").is_dir():
            os.symlink(Path("..") / name / "reward_model", link)
    return view


# ------------------------------------------------------------------------------------------- main


def start_actors(cfg: PlusConfig):
    """Check that every role fits, then start rollout (+ greedy eval) actor, reference, policy and RM groups
    (and the critic group for ppo; None otherwise)."""
    import ray

    from actors.critic import CriticGroup
    from actors.policy import PolicyGroup
    from actors.reference import ReferenceActor
    from actors.reward_model import RewardModelGroup
    from actors.rollout import RolloutActor
    from rlhf_cluster.config import ActorResources
    from rlhf_cluster.ray_setup import actor_options, check_fits, init_ray

    roles = {"rollout": cfg.rollout_resources, "reference": cfg.reference_resources}
    for i in range(cfg.deepspeed.num_ranks):
        roles.update({f"policy_rank{i}": cfg.policy_resources, f"rm_rank{i}": cfg.rm_resources})
        if cfg.policy.algorithm == "ppo":
            roles[f"critic_rank{i}"] = cfg.critic_resources
    check_fits(roles, init_ray(cfg.ray))
    m = cfg.models
    rollout = RolloutActor.options(**actor_options(cfg.rollout_resources)).remote(
        m.summarizer, cfg.rollout, m.dtype, cfg.seed
    )
    # Greedy validation needs other sampling settings than training: a second engine. It runs only while
    # the loop waits on it, so it reserves no CPU of its own (its GPU share is the rollout actor's).
    greedy = cfg.rollout.model_copy(update={"temperature": 0.0, "n_samples": 1, "backend": cfg.eval_backend})
    eval_res = ActorResources(num_cpus=0, num_gpus=cfg.rollout_resources.num_gpus)
    evaluator = RolloutActor.options(**actor_options(eval_res)).remote(m.summarizer, greedy, m.dtype, cfg.seed)
    reference = ReferenceActor.options(**actor_options(cfg.reference_resources)).remote(m.summarizer, m.dtype)
    policy = PolicyGroup(
        m.summarizer, cfg.policy, cfg.deepspeed, cfg.policy_resources, cfg.seed, cfg.policy.minibatch_size, m.dtype
    )
    rm = RewardModelGroup(m.reward_model, cfg.rm, cfg.deepspeed, cfg.rm_resources, cfg.seed, cfg.rollout_batch)
    critic = None
    if cfg.policy.algorithm == "ppo":
        critic = CriticGroup(
            m.summarizer, cfg.policy, cfg.deepspeed, cfg.critic_resources, cfg.seed, cfg.policy.minibatch_size, m.dtype
        )
    info = ray.get([a.info.remote() for a in (rollout, evaluator, reference)])
    print(
        f"  rollout ({info[0]['backend']}) {info[0]['startup_s']:.1f}s, eval engine {info[1]['startup_s']:.1f}s, "
        f"reference {info[2]['startup_s']}s; policy + RM{' + critic' if critic else ''}: "
        f"{cfg.deepspeed.num_ranks} rank(s) each",
        flush=True,
    )
    return rollout, evaluator, reference, policy, rm, critic


def main(argv=None) -> dict:
    argv, resume_dir = resume_argv(argv, "jobs.plus")
    cfg = parse_config(PlusConfig, argv, prog="jobs.plus")
    run_dir = Path(cfg.run_dir)
    resumed = read_checkpoint(run_dir, cfg) if resume_dir else None
    prepare_run_dir(cfg, run_dir)
    timings: dict[str, float] = dict(resumed["timings_s"]) if resumed else {}
    ppo = cfg.policy.algorithm == "ppo"

    with phase("load data", timings):
        from jobs.summarize import build_requests
        from rlhf_cluster.models import load_tokenizer

        train = read_split(cfg.data.dir, cfg.train_split, skip_bad_rows=cfg.data.skip_bad_rows, limit=cfg.data.limit)
        val = read_split(cfg.data.dir, cfg.rm.eval_split, skip_bad_rows=cfg.data.skip_bad_rows, limit=cfg.eval_limit)
        if train.num_rows < cfg.users_per_iter:
            raise SystemExit(f"train split has {train.num_rows} rows, fewer than users_per_iter={cfg.users_per_iter}")
        tokenizer = load_tokenizer(cfg.models.summarizer)
        candidates = same_user_pair_rows(train) if cfg.rm_pairs == "user" else None
        train_requests = build_requests(train, tokenizer, cfg.rollout, cfg.seed)
        val_requests = build_requests(val, tokenizer, cfg.rollout, cfg.seed)
        print(
            f"  train {train.num_rows} rows, {cfg.rm.eval_split} {val.num_rows} rows; "
            f"{cfg.users_per_iter} users × {cfg.rollout.n_samples} summaries per iteration; reward model: "
            f"{cfg.rm_updates_per_iter} step(s) per iteration on "
            + ("fresh pairs of each summary's user" if cfg.rm_pairs == "user" else "the scored pairs")
        )
    with phase("start actors", timings):
        import ray

        rollout, evaluator, reference, policy, rm, critic = start_actors(cfg)
        groups = {"policy": policy, "reward_model": rm, **({"critic": critic} if critic else {})}

    start, version, best, last_val = 0, 0, {"iteration": 0, "validation_accuracy": -1.0}, {}
    blob = None  # the latest synced weights (None: still the initial checkpoint)
    if resumed:
        with phase("restore checkpoint", timings):
            start, version, best, last_val = (
                resumed[k] for k in ("iteration", "weight_version", "best", "last_validation")
            )
            for role, group in groups.items():
                group.load_state(str(run_dir / "checkpoint" / role), resumed["tag"])
            if version > 0:  # the rollout engine samples with the restored policy, under its version
                blob = policy.state_dict_bytes()
                ray.get(rollout.update_weights.remote(blob, version))
            print(f"  resumed {run_dir} at iteration {start} (weight version {version})", flush=True)

    with MetricsLogger(run_dir, keep_until_step=start) as log:
        for it, rows in enumerate(user_batches(train.num_rows, cfg.users_per_iter, cfg.iterations, cfg.seed), 1):
            if it <= start:
                continue  # the data order is replayed from the seed up to the checkpoint
            t: dict[str, float] = {}
            batch = train.take(rows)
            with phase("generate", t, quiet=True):
                requests = rollout_requests(train_requests, rows, cfg.seed, it)
                rollouts = ray.get(rollout.generate.remote(requests, min_weight_version=version))
            with phase("score", t, quiet=True):
                pairs = summary_pairs(batch, rollouts)
                margins = torch.as_tensor(score_margins(rm, pairs))
                score = F.logsigmoid(margins)  # R = log σ(r_c − r_r); token_rewards clips it
            with phase("reference", t, quiet=True):
                old_lp, mask = token_tensor(rollouts.column("summary_logprobs"), "summary_logprobs")
                ref_lp, _ = token_tensor(
                    ray.get(reference.logprobs.remote(rollouts)).column("logprobs"), "ref logprobs"
                )
                kl = kl_penalty(old_lp, ref_lp, cfg.policy.kl_estimator)
            values = None
            if ppo:
                with phase("values", t, quiet=True):
                    values, _ = token_tensor(critic.values(rollouts).column("values"), "values")
            with phase("advantages", t, quiet=True):
                rewards = token_rewards(score, kl, mask, cfg.policy.kl_coef, cfg.policy.reward_clip)
                adv, returns = advantages_of(cfg, rollouts, rewards, mask, values)
            m = {}
            update_policy = not cfg.freeze_summarizer and not (ppo and it <= cfg.policy.critic_warmup_iterations)
            with phase("train summarizer", t, quiet=True):
                if update_policy:
                    m.update(train_minibatches(cfg, policy, policy_batch(rollouts, adv), cfg.seed + it, "policy"))
            if ppo:
                with phase("train critic", t, quiet=True):
                    m.update(
                        train_minibatches(cfg, critic, critic_batch(rollouts, values, returns), cfg.seed + it, "critic")
                    )
            with phase("train reward model", t, quiet=True):
                rng = np.random.default_rng([cfg.seed, it])  # per iteration: a resumed run draws the same pairs
                for _ in range(0 if cfg.freeze_reward_model else cfg.rm_updates_per_iter):
                    r = rm.train_step(reward_model_pairs(cfg, train, rows, rollouts, pairs, candidates, rng))
                    m.update(rm_loss=r["loss"], rm_accuracy=r["accuracy"], rm_grad_norm=r["grad_norm"])
            sampled_by = version
            with phase("sync weights", t, quiet=True):
                if update_policy:
                    blob = policy.state_dict_bytes()
                    version = ray.get(rollout.update_weights.remote(blob, version + 1))["weight_version"]
            stamped = set(rollouts.column("weight_version").to_pylist())
            if stamped != {sampled_by}:  # synchronous loop: every rollout uses the latest synced weights
                raise RuntimeError(
                    f"iteration {it}: rollouts stamped with weight versions {stamped}, expected {sampled_by}"
                )
            m.update(
                reward=float(score.clamp(-cfg.policy.reward_clip, cfg.policy.reward_clip).mean()),
                margin=float(margins.mean()),
                train_pair_accuracy=float((margins > 0).float().mean()),
                kl=float(masked_sum(kl, mask) / mask.sum()),
                return_mean=float(masked_sum(rewards, mask, dim=1).mean()),
                advantage_abs=float(masked_sum(adv.abs(), mask) / mask.sum() if adv.dim() == 2 else adv.abs().mean()),
                summary_tokens=float(mask.sum(1).float().mean()),
                stopped_at_eos=float(np.mean([r == "stop" for r in rollouts.column("finish_reason").to_pylist()])),
                rollout_weight_version=float(sampled_by),
                weight_version=float(version),
                **{f"time_{k.replace(' ', '_')}": v for k, v in t.items()},
            )
            log.log(it, m, "train")
            for k, v in t.items():
                timings[k] = round(timings.get(k, 0.0) + v, 3)
            print(
                f"iter {it}/{cfg.iterations}: reward {m['reward']:.3f} margin {m['margin']:.3f} kl {m['kl']:.4f} "
                f"rm_acc {m.get('rm_accuracy', float('nan')):.2f} v{version} ({sum(t.values()):.1f}s)",
                flush=True,
            )

            if it % cfg.eval_every == 0 or it == cfg.iterations:
                with phase("validate", timings, quiet=True):
                    v, texts = validate(evaluator, blob, version, val, val_requests, rm)
                log.log(it, {k: x for k, x in v.items() if x is not None}, "validation")
                last_val = v
                print(
                    "  validation accuracy: " + ", ".join(f"{k} {_fmt(v[k])}" for k in ("all", "contested", "agreed"))
                )
                show_summaries(val, texts, cfg.show)
                if v["all"] > best["validation_accuracy"]:
                    best = {"iteration": it, "validation_accuracy": v["all"], "validation": v}
                    with phase("save best", timings, quiet=True):
                        rm.save(str(run_dir / "best" / "reward_model"))
                        policy.save(str(run_dir / "best" / "summarizer"))
                    (run_dir / "best.json").write_text(json.dumps(best, indent=2))
            if it % cfg.checkpoint_every == 0 or it == cfg.iterations:
                with phase("checkpoint", timings, quiet=True):
                    save_checkpoint(
                        run_dir,
                        it,
                        groups,
                        {
                            "weight_version": version,
                            "best": best,
                            "last_validation": last_val,
                            "timings_s": timings,
                            "num_ranks": cfg.deepspeed.num_ranks,
                            "algorithm": cfg.policy.algorithm,
                        },
                    )

    with phase("save", timings):
        rm.save(str(run_dir / "last" / "reward_model"))
        policy.save(str(run_dir / "last" / "summarizer"))
        for group in groups.values():
            group.shutdown()
        for actor in (rollout, evaluator, reference):
            ray.kill(actor)
    view = write_evaluate_view(cfg, run_dir)
    result = {"best": best, "last_validation": last_val, "weight_version": version, "timings_s": timings}
    (run_dir / "train_summary.json").write_text(json.dumps(result, indent=2))
    print(
        f"best validation accuracy {best['validation_accuracy']:.3f} at iteration {best['iteration']}; run dir {run_dir}"
    )
    print(f"next: python -m jobs.evaluate --run {view}")
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    main()

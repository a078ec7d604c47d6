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

Every eval_every iterations: greedy summaries of validation examples (through the same rollout engine:
sampling settings are per request) → RM accuracy (all / contested / agreed); the best (on validation "all")
RM + summarizer are kept in run_dir/best/. Every checkpoint_every
iterations: run_dir/checkpoint/ (each group's weights, optimizer, LR schedule and RNG; the weight version,
best, timings; the data position is the iteration: the order is replayed from the seed), from which
``--resume`` continues with the same metrics as an uninterrupted run. The end writes run_dir/last/ and
run_dir/train_summary.json; run_dir/evaluate/ is a TrainRMConfig view of the run that
``python -m jobs.evaluate --run run_dir/evaluate`` reads (best RM, summaries by the best summarizer).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from rlhf_cluster.checkpoints import read_checkpoint, restore_groups, save_checkpoint
from rlhf_cluster.cli import dump_yaml, parse_config, prepare_run_dir, resume_argv
from rlhf_cluster.config import PlusConfig, TrainRMConfig
from rlhf_cluster.data import read_split
from rlhf_cluster.metrics import MetricsLogger, accuracy_by_subset, format_accuracy
from rlhf_cluster.restarts import run_restarting
from rlhf_cluster.reward_model import pair_table, tally_truncation, truncation_stats, truncation_totals
from rlhf_cluster.rl_step import (
    Roles,
    check_on_policy,
    experience,
    greedy,
    push_weights,
    rollout_requests,
    sample,
    step_metrics,
    sync_weights,
    update,
)
from rlhf_cluster.sampling import draw_same_user_rows, same_user_pair_rows
from rlhf_cluster.sampling import epoch_batches as user_batches
from rlhf_cluster.timing import phase

# ------------------------------------------------------------------------------ the PLUS reward


def summary_pairs(examples: pa.Table, rollouts: pa.Table) -> pa.Table:
    """REWARD_PAIR rows, one per sampled summary: its example's target pair, conditioned on the summary."""
    return pair_table(examples.take(rollouts.column("request_id")), rollouts.column("summary_text").to_pylist())


def score_margins(rm_group, pairs: pa.Table) -> np.ndarray:
    """r(chosen | z) − r(rejected | z) per row."""
    scores = rm_group.score(pairs)
    return scores.column("r_chosen").to_numpy() - scores.column("r_rejected").to_numpy()


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
    picked = train.take(draw_same_user_rows(candidates, own, rng))
    return pair_table(picked, rollouts.column("summary_text").to_pylist())


@dataclasses.dataclass
class PlusData:
    """The splits and their summarizer requests (token ids), loaded once."""

    train: pa.Table
    val: pa.Table
    train_requests: pa.Table
    val_requests: pa.Table
    candidates: list[np.ndarray] | None  # rm_pairs=user: each train row's same-user pair rows
    rm_tokenizer: object  # the reward model's: counts its truncated inputs on the driver


# -------------------------------------------------------------------------------- one iteration


def plus_iteration(
    cfg: PlusConfig, roles: Roles, rm, data: PlusData, it: int, rows, version: int, truncation: dict | None = None
) -> tuple:
    """One PLUS iteration on the users ``rows``: the shared RL step of the summarizer, scored by the reward
    model on each user's held-out pair, with the reward model trained on the same summaries before the
    sync. Returns (metrics, the new weight version, phase seconds); adds the reward-model pairs cut to
    rm.max_length to ``truncation`` (``truncation_totals``), when given."""
    t: dict[str, float] = {}
    batch = data.train.take(rows)
    with phase("generate", t, quiet=True):
        rollouts = sample(roles, rollout_requests(data.train_requests, rows, cfg.seed, it), version)
    with phase("score", t, quiet=True):
        pairs = summary_pairs(batch, rollouts)
        margins = torch.as_tensor(score_margins(rm, pairs))
        score = F.logsigmoid(margins)  # R = log σ(r_c − r_r); token_rewards clips it
        scored_cut = truncation_stats(data.rm_tokenizer, pairs, cfg.rm.max_length)  # pairs cut to rm.max_length
    exp = experience(cfg.policy, roles, rollouts, score, t)
    warming_critic = cfg.policy.algorithm == "ppo" and it <= cfg.policy.critic_warmup_iterations
    train_policy = not cfg.freeze_summarizer and not warming_critic
    m = update(cfg.policy, roles, exp, cfg.seed + it, t, "train summarizer", train_policy)
    with phase("train reward model", t, quiet=True):
        rng = np.random.default_rng([cfg.seed, it])  # per iteration: a resumed run draws the same pairs
        trained_cut = {"n_rows": 0, "n_truncated_rows": 0}
        for _ in range(0 if cfg.freeze_reward_model else cfg.rm_updates_per_iter):
            r = rm.train_step(reward_model_pairs(cfg, data.train, rows, rollouts, pairs, data.candidates, rng))
            m.update(rm_loss=r["loss"], rm_accuracy=r["accuracy"], rm_grad_norm=r["grad_norm"])
            trained_cut["n_rows"] += r["n_pairs"]
            trained_cut["n_truncated_rows"] += r["n_truncated_pairs"]
    if trained_cut["n_rows"]:
        trained_cut["share"] = trained_cut["n_truncated_rows"] / trained_cut["n_rows"]
        m.update(rm_trained_truncated_share=trained_cut["share"])
    m.update(rm_scored_truncated_share=scored_cut["share"])
    if truncation is not None and (warning := tally_truncation(truncation, it, scored_cut, trained_cut)):
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    new_version = sync_weights(roles, version, t, changed=train_policy)
    check_on_policy(rollouts, version, it)
    m.update(margin=float(margins.mean()), train_pair_accuracy=float((margins > 0).float().mean()))
    m.update(step_metrics(cfg.policy, exp, version, new_version, t), rollout_restarts=roles.rollout_restarts)
    return m, new_version, t


# ------------------------------------------------------------------------------------- validation


def validate(roles: Roles, data: PlusData, rm_group) -> tuple:
    """Greedy summaries by the current summarizer (the rollout engine, argmax per request) → RM accuracy
    by subset; (metrics, summaries)."""
    rollouts = greedy(roles, data.val_requests)
    margins = score_margins(rm_group, summary_pairs(data.val, rollouts))
    contested = data.val.column("contested").to_numpy(zero_copy_only=False)
    acc = accuracy_by_subset(margins, np.zeros_like(margins), contested)
    return acc, rollouts.column("summary_text").to_pylist()


def show_summaries(val: pa.Table, summaries: list[str], k: int) -> None:
    seen = set()
    users, truths = val.column("user_id").to_pylist(), val.column("user_description").to_pylist()
    for user, text, truth in zip(users, summaries, truths):
        if user in seen or len(seen) >= k:
            continue
        seen.add(user)
        print(f"  - user {user}: {text!r}" + ("" if truth is None else f"\n      (truth: {truth})"), flush=True)


def validate_and_keep_best(cfg, roles, rm, data, it: int, best: dict, log, run_dir: Path, timings: dict) -> tuple:
    """Validate, log, print; a new best (validation "all") saves the RM and summarizer to run_dir/best/.
    Returns (best, validation metrics)."""
    with phase("validate", timings, quiet=True):
        v, texts = validate(roles, data, rm)
    log.log(it, {k: x for k, x in v.items() if x is not None}, "validation")
    print("  validation accuracy: " + ", ".join(format_accuracy(v, k) for k in ("all", "contested", "agreed")))
    show_summaries(data.val, texts, cfg.show)
    if v["all"] > best["validation_accuracy"]:
        best = {"iteration": it, "validation_accuracy": v["all"], "validation": v}
        with phase("save best", timings, quiet=True):
            rm.save(str(run_dir / "best" / "reward_model"))
            roles.policy.save(str(run_dir / "best" / "summarizer"))
        (run_dir / "best.json").write_text(json.dumps(best, indent=2))
    return best, v


def run_label(cfg: PlusConfig) -> str:
    """The run's label in comparison tables: its ``name`` if set, else PLUS, its algorithm and which side
    was frozen (jobs.compare appends the settings that tell two unnamed groups with one label apart)."""
    if cfg.name:
        return cfg.name
    frozen = [side for side, on in (("summarizer", cfg.freeze_summarizer), ("RM", cfg.freeze_reward_model)) if on]
    return f"PLUS ({cfg.policy.algorithm}" + "".join(f", frozen {f}" for f in frozen) + ")"


def write_evaluate_view(cfg: PlusConfig, run_dir: Path) -> Path:
    """run_dir/evaluate/: a TrainRMConfig (summary conditioning, greedy best summarizer) + links to best/,
    last/ reward models, so that jobs.evaluate scores this run as it scores a train_rm run; and next to it
    plus.yaml (``rlhf_cluster.runs.PLUS_VIEW_FILE``): this run's PlusConfig and label. The TrainRMConfig cannot
    tell PLUS experiments apart (its summarizer is each run's own best/, and the PLUS settings — algorithm,
    kl_coef, users_per_iter, … — have no place in it), so jobs.compare groups and labels the view by plus.yaml."""
    import yaml

    from rlhf_cluster.runs import PLUS_VIEW_FILE

    view = run_dir / "evaluate"
    view.mkdir(exist_ok=True)
    rm_cfg = TrainRMConfig(
        run_dir=str(view),
        name=cfg.name,
        seed=cfg.seed,
        data=cfg.data,
        train_split=cfg.train_split,
        models=cfg.models.model_copy(update={"summarizer": str((run_dir / "best" / "summarizer").resolve())}),
        rm=cfg.rm.model_copy(update={"batch_size": cfg.rollout_batch}),
        deepspeed=cfg.deepspeed,
        ray=cfg.ray,
        rank_resources=cfg.rm_resources,
        rollout=cfg.rollout.model_copy(update={"temperature": 0.0, "n_samples": 1}),
        rollout_resources=cfg.rollout_resources,
    )
    (view / "config.yaml").write_text(dump_yaml(rm_cfg))
    plus = {"label": run_label(cfg), "config": cfg.model_dump(mode="json")}
    (view / PLUS_VIEW_FILE).write_text(
        "# The jobs.plus run this view evaluates: jobs.compare groups it with the runs whose config differs only\n"
        "# in seed, run_dir, ray, resources, show and checkpoint_every, and labels the group with `label`.\n"
        + yaml.safe_dump(plus, sort_keys=False)
    )
    for name in ("best", "last"):
        link = view / name
        if not link.is_symlink() and (run_dir / name / "reward_model").is_dir():
            os.symlink(Path("..") / name / "reward_model", link)
    return view


# ------------------------------------------------------------------------------------------ set-up


def load_data(cfg: PlusConfig) -> PlusData:
    from rlhf_cluster.models import load_tokenizer
    from rlhf_cluster.prompts import build_requests

    read = dict(skip_bad_rows=cfg.data.skip_bad_rows)
    train = read_split(cfg.data.dir, cfg.train_split, limit=cfg.data.limit, **read)
    val = read_split(cfg.data.dir, cfg.rm.eval_split, limit=cfg.eval_limit, **read)
    if train.num_rows < cfg.users_per_iter:
        raise SystemExit(f"train split has {train.num_rows} rows, fewer than users_per_iter={cfg.users_per_iter}")
    tokenizer = load_tokenizer(cfg.models.summarizer)
    candidates = same_user_pair_rows(train) if cfg.rm_pairs == "user" else None
    requests = [build_requests(split, tokenizer, cfg.rollout, cfg.seed) for split in (train, val)]
    rm_tokenizer = load_tokenizer(cfg.models.reward_model)
    print(
        f"  train {train.num_rows} rows, {cfg.rm.eval_split} {val.num_rows} rows; {cfg.users_per_iter} users × "
        f"{cfg.rollout.n_samples} summaries per iteration; reward model: {cfg.rm_updates_per_iter} step(s) per "
        "iteration on " + ("fresh pairs of each summary's user" if cfg.rm_pairs == "user" else "the scored pairs")
    )
    return PlusData(train, val, *requests, candidates, rm_tokenizer)


def start_actors(cfg: PlusConfig) -> tuple[Roles, object]:
    """Check that every role fits, then start the rollout actor, reference, policy and RM groups (and the
    critic group for ppo). Returns (the RL step's roles, the reward-model group)."""
    import ray

    from actors.critic import CriticGroup
    from actors.policy import PolicyGroup
    from actors.reference import ReferenceActor
    from actors.reward_model import RewardModelGroup
    from actors.rollout import RolloutActor
    from rlhf_cluster.ray_setup import actor_options, check_fits, init_ray

    ppo, m, ds = cfg.policy.algorithm == "ppo", cfg.models, cfg.deepspeed
    needs = {"rollout": cfg.rollout_resources, "reference": cfg.reference_resources}
    for i in range(ds.num_ranks):
        needs.update({f"policy_rank{i}": cfg.policy_resources, f"rm_rank{i}": cfg.rm_resources})
        needs.update({f"critic_rank{i}": cfg.critic_resources} if ppo else {})
    check_fits(needs, init_ray(cfg.ray))

    def start_rollout():
        return RolloutActor.options(**actor_options(cfg.rollout_resources)).remote(
            m.summarizer, cfg.rollout, m.dtype, cfg.seed
        )

    rollout = start_rollout()
    reference = ReferenceActor.options(**actor_options(cfg.reference_resources)).remote(m.summarizer, m.dtype)
    batch = cfg.policy.minibatch_size
    policy = PolicyGroup(m.summarizer, cfg.policy, ds, cfg.policy_resources, cfg.seed, batch, m.dtype)
    rm = RewardModelGroup(m.reward_model, cfg.rm, ds, cfg.rm_resources, cfg.seed, cfg.rollout_batch)
    critic = CriticGroup(m.summarizer, cfg.policy, ds, cfg.critic_resources, cfg.seed, batch, m.dtype) if ppo else None
    info = ray.get([a.info.remote() for a in (rollout, reference)])
    print(
        f"  rollout ({info[0]['backend']}) {info[0]['startup_s']:.1f}s, reference {info[1]['startup_s']}s; "
        f"policy + RM{' + critic' if critic else ''}: {ds.num_ranks} rank(s) each",
        flush=True,
    )
    return Roles(rollout, reference, policy, critic, start_rollout), rm


# ------------------------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    argv, resume_dir = resume_argv(argv, "jobs.plus")
    cfg = parse_config(PlusConfig, argv, prog="jobs.plus")
    return run_restarting(train, cfg, resume=resume_dir is not None, prog="jobs.plus")  # restarts after actor deaths


def train(cfg: PlusConfig, resume: bool) -> dict:
    """The run, from run_dir/checkpoint when ``resume``; main calls it again after an actor death."""
    run_dir = Path(cfg.run_dir)
    must_match = {"num_ranks": cfg.deepspeed.num_ranks, "algorithm": cfg.policy.algorithm}
    resumed = read_checkpoint(run_dir, cfg.iterations, cfg.checkpoint_every, must_match) if resume else None
    prepare_run_dir(cfg, run_dir)
    timings: dict[str, float] = dict(resumed["timings_s"]) if resumed else {}
    with phase("load data", timings):
        data = load_data(cfg)
    with phase("start actors", timings):
        roles, rm = start_actors(cfg)
        groups = {"policy": roles.policy, "reward_model": rm, **({"critic": roles.critic} if roles.critic else {})}
    start, version, best, last_val = 0, 0, {"iteration": 0, "validation_accuracy": -1.0}, {}
    truncation = truncation_totals(cfg.rm.max_length, cfg.rm.truncation_side)
    if resumed:
        with phase("restore checkpoint", timings):
            start, version, best, last_val = (
                resumed[k] for k in ("iteration", "weight_version", "best", "last_validation")
            )
            restore_groups(run_dir, groups, resumed)
            truncation = resumed.get("truncation") or truncation
            if version > 0:  # the rollout engine samples with the restored policy, under its version
                push_weights(roles, version)
            print(f"  resumed {run_dir} at iteration {start} (weight version {version})", flush=True)

    with MetricsLogger(run_dir, keep_until_step=start) as log:
        for it, rows in enumerate(user_batches(data.train.num_rows, cfg.users_per_iter, cfg.iterations, cfg.seed), 1):
            if it <= start:
                continue  # the data order is replayed from the seed up to the checkpoint
            m, version, t = plus_iteration(cfg, roles, rm, data, it, rows, version, truncation)
            log.log(it, m, "train")
            for k, v in t.items():
                timings[k] = round(timings.get(k, 0.0) + v, 3)
            print(
                f"iter {it}/{cfg.iterations}: reward {m['reward']:.3f} margin {m['margin']:.3f} kl {m['kl']:.4f} "
                f"rm_acc {m.get('rm_accuracy', float('nan')):.2f} v{version} ({sum(t.values()):.1f}s)",
                flush=True,
            )
            if it % cfg.eval_every == 0 or it == cfg.iterations:
                best, last_val = validate_and_keep_best(cfg, roles, rm, data, it, best, log, run_dir, timings)
            if it % cfg.checkpoint_every == 0 or it == cfg.iterations:
                driver = {"weight_version": version, "best": best, "last_validation": last_val, "timings_s": timings}
                driver["truncation"] = truncation
                with phase("checkpoint", timings, quiet=True):
                    save_checkpoint(run_dir, it, groups, {**driver, **must_match})
    return finish(cfg, run_dir, roles, rm, groups, best, last_val, version, timings, truncation)


def finish(
    cfg, run_dir: Path, roles: Roles, rm, groups: dict, best, last_val, version: int, timings, truncation=None
) -> dict:
    """Save last/, stop every actor, write the evaluate view and train_summary.json."""
    import ray

    with phase("save", timings):
        rm.save(str(run_dir / "last" / "reward_model"))
        roles.policy.save(str(run_dir / "last" / "summarizer"))
        for group in groups.values():
            group.shutdown()
        for actor in (roles.rollout, roles.reference):
            ray.kill(actor)
    view = write_evaluate_view(cfg, run_dir)
    result = {"best": best, "last_validation": last_val, "weight_version": version, "timings_s": timings}
    result["truncation"] = truncation
    (run_dir / "train_summary.json").write_text(json.dumps(result, indent=2))
    print(
        f"best validation accuracy {best['validation_accuracy']:.3f} at iteration {best['iteration']}; run dir "
        f"{run_dir}"
    )
    print(f"next: python -m jobs.evaluate --run {view}")
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    main()

"""Stage 2: train a response policy π(y | prompt, z) with a personalized reward model r(prompt, y | z).

    python -m jobs.personalize --config configs/personalize_pets.yaml [key=value ...]
    python -m jobs.personalize --resume RUN_DIR [iterations=N]     # continue exactly from RUN_DIR/checkpoint

The source is a trained run: a jobs.plus run (its best reward model; each user's summary written once,
greedy, by its best summarizer and cached in run_dir/summaries/) or a jobs.train_rm run (its reward model
and conditioning: bt reads nothing, oracle the true description). The policy reads what the reward model
reads — the conditioning turn, then the prompt — and writes the response. One iteration, each phase
timed (metrics.jsonl, tb/):

  generate      prompts_per_iter (user, prompt) rows (seeded, epoch-shuffled) → rollout.n_samples responses
  score         r(prompt, y | z) from the frozen reward model (a DeepSpeed group here, or a Serve endpoint)
  reference / [values] / advantages / train policy / [train critic] / sync weights
                the RL step jobs.plus runs (rlhf_cluster.rl_step); nothing else trains

Every eval_every iterations: greedy responses for validation rows → the learned reward and the TRUE utility
side by side (reward hacking shows as one rising while the other falls), the win rate against the base
policy's responses under the true preferences, and how often a user gets their type's better answer;
the best policy on validation (true utility) is kept in run_dir/best/. Ground truth comes from the
generated world (rlhf_cluster.datasets.truth); data without it is refused.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rlhf_cluster.checkpoints import read_checkpoint, restore_groups, save_checkpoint
from rlhf_cluster.cli import ConfigError, parse_config, prepare_run_dir, resume_argv
from rlhf_cluster.config import ModelsConfig
from rlhf_cluster.data import list_splits, read_split
from rlhf_cluster.datasets.truth import NoGroundTruth, world_truth
from rlhf_cluster.metrics import MetricsLogger
from rlhf_cluster.personalize_config import PersonalizeConfig
from rlhf_cluster.restarts import run_restarting
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
from rlhf_cluster.runs import read_run
from rlhf_cluster.sampling import epoch_batches
from rlhf_cluster.schema import RESPONSE_SCHEMA
from rlhf_cluster.timing import phase

# ---------------------------------------------------------------------------------------- the source


@dataclasses.dataclass
class Source:
    """The trained run the reward comes from."""

    reward_model: str
    summarizer: str | None
    conditioning: str  # bt | oracle | context | summary
    run: object  # its PlusConfig / TrainRMConfig
    label: str


def load_source(cfg: PersonalizeConfig) -> Source:
    try:
        run = read_run(Path(cfg.source), cfg.checkpoint)
    except ConfigError as err:
        raise SystemExit(f"source={cfg.source}: {str(err).strip()}") from None
    conditioning = run["conditioning"]
    if conditioning == "summary" and not run["summarizer"]:
        raise SystemExit(f"source={cfg.source}: a summary-conditioned reward model without a summarizer")
    is_plus = "policy" in type(run["config"]).model_fields
    label = getattr(run["config"], "name", None) or ("PLUS" if is_plus else "train_rm")
    return Source(run["reward_model"], run["summarizer"], conditioning, run["config"], label)


def conditioning_of(cfg: PersonalizeConfig, source: Source, tables: dict[str, pa.Table]) -> dict[str, list]:
    """What the reward model (and so the policy) reads about each row's user, per split; summaries are
    written by one rollout actor for every split not yet cached in run_dir/summaries/."""
    from rlhf_cluster.reward_model import conditioning_texts

    summaries = dict.fromkeys(tables)
    if source.conditioning == "summary":
        from actors.rollout import cached_summaries_for

        as_written = source.run.rollout.model_copy(update={"temperature": 0.0, "n_samples": 1})  # as the run wrote them
        models = ModelsConfig(summarizer=source.summarizer, dtype=cfg.dtype)
        paths = {n: (t, Path(cfg.run_dir) / "summaries" / f"{n}.parquet") for n, t in tables.items()}
        summaries = cached_summaries_for(paths, models, as_written, cfg.rollout_resources, cfg.ray, cfg.seed)
    pairs = source.run.rm.max_context_pairs
    return {n: conditioning_texts(t, source.conditioning, summaries[n], pairs) for n, t in tables.items()}


@dataclasses.dataclass
class Split:
    rows: pa.Table
    conditioning: list[str | None]
    requests: pa.Table


def response_rows(split: Split, rollouts: pa.Table, rows=None) -> pa.Table:
    """RESPONSE_SCHEMA rows, one per rollout: its request's user, conditioning and prompt, and the response."""
    idx = rollouts.column("request_id").to_numpy()
    picked = np.asarray(rows if rows is not None else np.arange(split.rows.num_rows))[idx]
    cols = {
        "user_id": split.rows.column("user_id").take(picked),
        "conditioning": pa.array([split.conditioning[i] for i in picked], pa.string()),
        "prompt": split.rows.column("prompt").take(picked),
        "response": rollouts.column("summary_text"),
    }
    return pa.Table.from_pydict(cols, schema=RESPONSE_SCHEMA)


# ------------------------------------------------------------------------------------ one iteration


def personalize_iteration(cfg, roles: Roles, scorer, train: Split, truth, it: int, rows, version: int) -> tuple:
    """One RL step of the response policy on the (user, prompt) rows ``rows``; (metrics, version, phase s)."""
    t: dict[str, float] = {}
    with phase("generate", t, quiet=True):
        rollouts = sample(roles, rollout_requests(train.requests, rows, cfg.seed, it), version)
    with phase("score", t, quiet=True):
        scored = response_rows(train, rollouts, rows)
        score = torch.as_tensor(scorer.rewards(scored).column("reward").to_numpy().astype(np.float32))
        if not torch.isfinite(score).all():  # never train on a made-up number
            bad = int((~torch.isfinite(score)).sum())
            raise RuntimeError(f"iteration {it}: the reward model gave {bad} non-finite rewards of {len(score)}")
    exp = experience(cfg.policy, roles, rollouts, score, t)
    m = update(cfg.policy, roles, exp, cfg.seed + it, t, "train policy", train_policy=True)
    new_version = sync_weights(roles, version, t)
    check_on_policy(rollouts, version, it)
    owners = train.rows.take(np.asarray(rows)[rollouts.column("request_id").to_numpy()]).to_pylist()
    responses = scored.column("response").to_pylist()
    m["true_utility"] = float(np.mean([truth.utility(y, r) for y, r in zip(responses, owners)]))
    m["personalized_share"] = float(np.mean([truth.kind(y) == truth.best_kind(r) for y, r in zip(responses, owners)]))
    m["learned_reward"] = float(score.mean())
    m.update(step_metrics(cfg.policy, exp, version, new_version, t), rollout_restarts=roles.rollout_restarts)
    return m, new_version, t


# ---------------------------------------------------------------------------------------- validation


def greedy_responses(roles: Roles, split: Split) -> list[str]:
    out = greedy(roles, split.requests)
    return out.column("summary_text").to_pylist()


def judge(truth, split: Split, responses: list[str], base: list[str], rewards: np.ndarray) -> dict:
    """Learned reward and true utility side by side; win rate vs the base policy under the true preferences
    (ties count one half); the share of rows whose response is their user type's better answer."""
    rows = split.rows.to_pylist()
    wins = [truth.prefer_prob(y, b, r) for y, b, r in zip(responses, base, rows)]
    return {
        "learned_reward": float(np.mean(rewards)),
        "true_utility": float(np.mean([truth.utility(y, r) for y, r in zip(responses, rows)])),
        "win_rate_vs_base": float(np.mean(wins)),
        "personalized_share": float(np.mean([truth.kind(y) == truth.best_kind(r) for y, r in zip(responses, rows)])),
    }


def judge_rows(truth, split: Split, responses: list[str], base: list[str], rewards: np.ndarray, idx) -> dict:
    """``judge`` on the rows ``idx`` of a split."""
    idx = list(idx)
    sub = Split(split.rows.take(idx), [split.conditioning[i] for i in idx], split.requests.take(idx))
    return judge(truth, sub, [responses[i] for i in idx], [base[i] for i in idx], np.asarray(rewards)[idx])


def greedy_scored(roles: Roles, scorer, split: Split) -> tuple[list[str], np.ndarray]:
    """The current policy's greedy responses to a split and the reward model's reward of each."""
    responses = greedy_responses(roles, split)
    return responses, scorer.rewards(response_rows(split, _as_rollouts(responses))).column("reward").to_numpy()


def validate(roles: Roles, scorer, val: Split, truth, base: list[str]) -> tuple[dict, list[str]]:
    responses, rewards = greedy_scored(roles, scorer, val)
    return judge(truth, val, responses, base, rewards), responses


def _as_rollouts(responses: list[str]) -> pa.Table:
    return pa.table({"request_id": pa.array(range(len(responses)), pa.int64()), "summary_text": responses})


def base_responses(run_dir: Path, roles: Roles, splits: dict[str, Split]) -> dict[str, list[str]]:
    """The initial policy's greedy responses per split, written once to run_dir/base_responses/ (a resumed
    run reads them back: its engine already holds trained weights)."""
    out = {}
    for name, split in splits.items():
        path = run_dir / "base_responses" / f"{name}.parquet"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"response": greedy_responses(roles, split)}), path)
        out[name] = pq.read_table(path).column("response").to_pylist()
    return out


def show(truth, val: Split, responses: list[str], k: int) -> None:
    """One response per user, for the first ``k`` users, with the user's true type."""
    seen: set[str] = set()
    for row, y in zip(val.rows.to_pylist(), responses):
        if row["user_id"] in seen or len(seen) >= k:
            continue
        seen.add(row["user_id"])
        print(f"  - {truth.user_type(row)} user {row['user_id']}: {y[:160]!r}", flush=True)


# -------------------------------------------------------------------------------------------- set-up


def start_actors(cfg: PersonalizeConfig, source: Source) -> tuple[Roles, object]:
    """The rollout actor, reference and policy group (critic for ppo) on the policy; the reward scorer."""
    import ray

    from actors.critic import CriticGroup
    from actors.policy import PolicyGroup
    from actors.reference import ReferenceActor
    from actors.reward_model import RewardModelGroup
    from actors.rollout import RolloutActor
    from rlhf_cluster.ray_setup import actor_options, check_fits, init_ray

    ppo, ds, path = cfg.policy.algorithm == "ppo", cfg.deepspeed, cfg.policy_model
    needs = {"rollout": cfg.rollout_resources, "reference": cfg.reference_resources}
    for i in range(ds.num_ranks):
        needs[f"policy_rank{i}"] = cfg.policy_resources
        needs.update({f"rm_rank{i}": cfg.rm_resources} if cfg.reward == "reward_model" else {})
        needs.update({f"critic_rank{i}": cfg.critic_resources} if ppo else {})
    check_fits(needs, init_ray(cfg.ray))

    def start_rollout():
        return RolloutActor.options(**actor_options(cfg.rollout_resources)).remote(
            path, cfg.rollout, cfg.dtype, cfg.seed
        )

    rollout = start_rollout()
    reference = ReferenceActor.options(**actor_options(cfg.reference_resources)).remote(path, cfg.dtype)
    mb = cfg.policy.minibatch_size
    policy = PolicyGroup(path, cfg.policy, ds, cfg.policy_resources, cfg.seed, mb, cfg.dtype)
    critic = CriticGroup(path, cfg.policy, ds, cfg.critic_resources, cfg.seed, mb, cfg.dtype) if ppo else None
    if cfg.reward == "serve":
        from rlhf_cluster.serve_client import ServedRewards

        scorer = ServedRewards(cfg.serve_url)
    else:
        rm_cfg = source.run.rm.model_copy(update={"batch_size": cfg.rollout_batch})
        scorer = RewardModelGroup(source.reward_model, rm_cfg, ds, cfg.rm_resources, cfg.seed)
    ray.get([rollout.info.remote(), reference.info.remote()])
    return Roles(rollout, reference, policy, critic, start_rollout), scorer


# ---------------------------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    argv, resume_dir = resume_argv(argv, "jobs.personalize")
    cfg = parse_config(PersonalizeConfig, argv, prog="jobs.personalize")
    return run_restarting(
        train, cfg, resume=resume_dir is not None, prog="jobs.personalize"
    )  # restarts after actor deaths


def train(cfg: PersonalizeConfig, resume: bool) -> dict:
    """The run, from run_dir/checkpoint when ``resume``; main calls it again after an actor death."""
    run_dir, source = Path(cfg.run_dir), load_source(cfg)
    must_match = {"num_ranks": cfg.deepspeed.num_ranks, "algorithm": cfg.policy.algorithm}
    resumed = read_checkpoint(run_dir, cfg.iterations, cfg.checkpoint_every, must_match) if resume else None
    prepare_run_dir(cfg, run_dir)
    timings: dict[str, float] = dict(resumed["timings_s"]) if resumed else {}
    with phase("load data", timings):
        train, val, tests, truth = load_data(cfg, source)
    with phase("start actors", timings):
        roles, scorer = start_actors(cfg, source)
        groups = {"policy": roles.policy, **({"critic": roles.critic} if roles.critic else {})}
    start, version, best = 0, 0, {"iteration": 0, "true_utility": -float("inf")}
    if resumed:
        with phase("restore checkpoint", timings):
            start, version, best = resumed["iteration"], resumed["weight_version"], resumed["best"]
            restore_groups(run_dir, groups, resumed)
            if version > 0:
                push_weights(roles, version)
            print(f"  resumed {run_dir} at iteration {start} (weight version {version})", flush=True)
    base = base_responses(run_dir, roles, {cfg.eval_split: val, **tests})
    with MetricsLogger(run_dir, keep_until_step=start) as log:
        for it, rows in enumerate(
            epoch_batches(train.rows.num_rows, cfg.prompts_per_iter, cfg.iterations, cfg.seed), 1
        ):
            if it <= start:
                continue  # the data order is replayed from the seed up to the checkpoint
            m, version, t = personalize_iteration(cfg, roles, scorer, train, truth, it, rows, version)
            log.log(it, m, "train")
            for k, v in t.items():
                timings[k] = round(timings.get(k, 0.0) + v, 3)
            print(
                f"iter {it}/{cfg.iterations}: learned reward {m['learned_reward']:.3f} true utility "
                f"{m['true_utility']:.3f} their type's answer {m['personalized_share']:.2f} kl {m['kl']:.4f} "
                f"v{version} ({sum(t.values()):.1f}s)",
                flush=True,
            )
            if it % cfg.eval_every == 0 or it == cfg.iterations:
                best = validate_and_keep_best(
                    cfg, roles, scorer, val, truth, base[cfg.eval_split], it, best, log, timings
                )
            if it % cfg.checkpoint_every == 0 or it == cfg.iterations:
                driver = {"weight_version": version, "best": best, "timings_s": timings, **must_match}
                with phase("checkpoint", timings, quiet=True):
                    save_checkpoint(run_dir, it, groups, driver)
    with phase("evaluate", timings):
        label = cfg.name or f"policy trained with {source.label} ({source.conditioning})"
        evaluate_best(run_dir, label, roles, scorer, truth, tests, base, best, version)
    return finish(cfg, run_dir, roles, scorer, groups, best, version, timings)


def load_data(cfg: PersonalizeConfig, source: Source) -> tuple[Split, Split, dict[str, Split], object]:
    """Train and validation splits, every test split the world scores, and the world's ground truth."""
    from rlhf_cluster.models import load_tokenizer
    from rlhf_cluster.prompts import response_requests

    data = cfg.data or source.run.data
    try:
        truth = world_truth(data.dir)
    except NoGroundTruth as err:
        raise SystemExit(f"data.dir={data.dir}: {err}") from None
    names = [n for n in list_splits(data.dir) if n not in (cfg.train_split, cfg.eval_split) and truth.scores_split(n)]
    limits = {cfg.train_split: data.limit, cfg.eval_split: cfg.eval_limit, **dict.fromkeys(names, cfg.test_limit)}
    tables = {n: read_split(data.dir, n, skip_bad_rows=data.skip_bad_rows, limit=k) for n, k in limits.items()}
    if (n_train := tables[cfg.train_split].num_rows) < cfg.prompts_per_iter:
        raise SystemExit(f"{cfg.train_split}: {n_train} rows, fewer than prompts_per_iter={cfg.prompts_per_iter}")
    conditioning, tokenizer = conditioning_of(cfg, source, tables), load_tokenizer(cfg.policy_model)
    splits = {
        n: Split(t, conditioning[n], response_requests(t, conditioning[n], tokenizer, cfg.rollout, cfg.seed))
        for n, t in tables.items()
    }
    train, val = splits.pop(cfg.train_split), splits.pop(cfg.eval_split)
    print(
        f"  reward from {source.label} ({source.conditioning} conditioning); {train.rows.num_rows} train rows, "
        f"{val.rows.num_rows} {cfg.eval_split} rows; ceilings on conflicting prompts: {truth.ceilings()}"
    )
    return train, val, splits, truth


def validate_and_keep_best(cfg, roles, scorer, val, truth, base, it, best, log, timings) -> dict:
    with phase("validate", timings, quiet=True):
        v, responses = validate(roles, scorer, val, truth, base)
    log.log(it, v, "validation")
    print("  validation: " + ", ".join(f"{k} {x:.3f}" for k, x in v.items()), flush=True)
    show(truth, val, responses, cfg.show)
    if v["true_utility"] > best["true_utility"]:
        best = {"iteration": it, "true_utility": v["true_utility"], "validation": v}
        with phase("save best", timings, quiet=True):
            roles.policy.save(str(Path(cfg.run_dir) / "best" / "policy"))
        (Path(cfg.run_dir) / "best.json").write_text(json.dumps(best, indent=2))
    return best


def evaluate_best(run_dir: Path, label: str, roles: Roles, scorer, truth, tests: dict, base: dict, best, version: int):
    """The best policy (on validation) on every test split: the judge's figures overall and per user type,
    the ceilings and sample responses per type → run_dir/eval.json."""
    if (run_dir / "best" / "policy").is_dir():
        roles.policy.load(str(run_dir / "best" / "policy"))
        push_weights(roles, version + 1)
    result = {"name": label, "best_iteration": best["iteration"], "ceilings": truth.ceilings(), "splits": {}}
    for name, split in tests.items():
        responses, rewards = greedy_scored(roles, scorer, split)
        rows = split.rows.to_pylist()
        types, judged = [truth.user_type(r) for r in rows], (truth, split, responses, base[name], rewards)
        per = {"all": judge_rows(*judged, range(len(rows)))}
        if contested := [i for i, r in enumerate(rows) if r.get("contested")]:  # the types disagree on the pair
            per["contested"] = judge_rows(*judged, contested)
        for t in sorted(set(types)):
            idx = [i for i, x in enumerate(types) if x == t]
            per[t] = {**judge_rows(*judged, idx), "samples": [responses[i] for i in idx[:2]]}
        result["splits"][name] = per
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in per["all"].items()), flush=True)
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
    return result


def finish(cfg, run_dir: Path, roles: Roles, scorer, groups: dict, best: dict, version: int, timings) -> dict:
    import ray

    with phase("save", timings):
        roles.policy.save(str(run_dir / "last" / "policy"))
        for group in [*groups.values(), *([scorer] if hasattr(scorer, "shutdown") else [])]:
            group.shutdown()
        for actor in (roles.rollout, roles.reference):
            ray.kill(actor)
    result = {"best": best, "weight_version": version, "timings_s": timings}
    (run_dir / "train_summary.json").write_text(json.dumps(result, indent=2))
    print(
        f"best validation true utility {best['true_utility']:.3f} at iteration {best['iteration']}; run dir {run_dir}"
    )
    return result


if __name__ == "__main__":
    main()

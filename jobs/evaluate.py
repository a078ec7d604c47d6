"""Pairwise accuracy of a trained reward model on every test split, next to the dataset's ceilings.

    python -m jobs.evaluate --run RUN_DIR [--data DATA_DIR] [--splits '[test_seen_users]'] [--limit N]

Reads RUN_DIR/config.yaml (the resolved TrainRMConfig) and the checkpoint RUN_DIR/best (falls back to
RUN_DIR/last with a notice). Conditions each pair as the run did (``rm.conditioning``); for ``summary``
the summaries come from the run's fixed summarizer: RUN_DIR/summaries/<split>.parquet when cached
(columns user_id, row, summary), else ``actors.rollout.summarize_examples`` writes them there (the uncached
splits together, by one rollout actor).

Per split: accuracy over all / contested / agreed pairs (ties count half; rows with unknown
``contested`` count only in all) and per-user accuracy (mean over users, worst decile), from
``rlhf_cluster.metrics``. For ``summary`` on data with ground truth (``user_description``): how much
of it the summaries leave open (distinct summaries, H(truth | summary) in bits next to H(truth),
``rlhf_cluster.metrics.summary_information``). Writes RUN_DIR/eval.json and RUN_DIR/eval.md (printed too), the ceilings
copied from DATA_DIR/ceilings.json (null when the dataset has none). With ``--data`` the files are
RUN_DIR/eval-<data dir name>.json/.md and summaries are cached in RUN_DIR/summaries-<data dir name>/,
so the run's own evaluation is never overwritten. Bad inputs exit with code 2 and a message naming
the path.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import yaml
from pydantic import ValidationError

from rlhf_cluster.cli import EXIT_USAGE, parse_config
from rlhf_cluster.config import EvaluateConfig, RayConfig, TrainRMConfig
from rlhf_cluster.data import DataError, list_splits, read_split
from rlhf_cluster.metrics import (
    accuracy_by_subset,
    pair_correct,
    per_user_accuracy,
    summary_information,
    summary_lines,
)
from rlhf_cluster.models import CheckpointError, check_checkpoint_dir, load_reward_model, load_tokenizer
from rlhf_cluster.progress import progress
from rlhf_cluster.reward_model import conditioning_texts, encode_pairs, pair_rewards, pair_table

SUBSETS = ("all", "contested", "agreed")
CEILINGS = {"oracle": "oracle", "user_agnostic": "user-agnostic", "bayes_n_context": "n-context Bayes"}


class EvalError(Exception):
    """An input the user must fix (missing run dir, checkpoint, split …); the message names the path."""


@dataclasses.dataclass
class Run:
    dir: Path
    cfg: TrainRMConfig
    checkpoint: Path
    checkpoint_name: str  # "best" or "last"
    best: dict | None  # best.json: {"step", "validation_accuracy"}, when present


@dataclasses.dataclass
class Target:
    data_dir: Path
    stem: str  # output file stem: "eval" or "eval-<data dir name>"
    summaries_dir: Path
    splits: list[str]
    ceilings: dict | None


# ------------------------------------------------------------------------------------ inputs


def load_run(run_dir: str | Path, which: str = "best") -> Run:
    """The run's resolved config and checkpoint; EvalError naming the path when either is missing."""
    d = Path(run_dir)
    if not d.is_dir():
        raise EvalError(f"run directory {d} does not exist")
    cfg_path = d / "config.yaml"
    if not cfg_path.is_file():
        raise EvalError(f"{cfg_path}: not found; expected the config.yaml that jobs.train_rm writes in its run dir")
    try:
        cfg = TrainRMConfig.model_validate(yaml.safe_load(cfg_path.read_text()))
    except (yaml.YAMLError, ValidationError) as err:
        raise EvalError(f"{cfg_path}: not a valid TrainRMConfig:\n{err}") from None
    checkpoint = _pick_checkpoint(d, which)
    best = json.loads((d / "best.json").read_text()) if (d / "best.json").is_file() else None
    return Run(d, cfg, checkpoint, checkpoint.name, best)


def _pick_checkpoint(d: Path, which: str) -> Path:
    order = ["best", "last"] if which == "best" else ["last"]
    problems = []
    for name in order:
        try:
            return check_checkpoint_dir(d / name)
        except CheckpointError as err:
            problems.append(str(err))
            if name == "best" and len(order) > 1:
                print(f"notice: {d / 'best'} is not usable; falling back to {d / 'last'}", file=sys.stderr)
    raise EvalError(f"{d}: no usable checkpoint:\n  " + "\n  ".join(problems))


def resolve_target(cfg: EvaluateConfig, run: Run) -> Target:
    """Dataset, output stem, summary cache, splits and ceilings of this evaluation."""
    own = Path(run.cfg.data.dir)
    data_dir = Path(cfg.data) if cfg.data else own
    if not data_dir.is_dir():
        raise EvalError(f"data directory {data_dir} does not exist")
    same_data = data_dir.resolve() == own.resolve()
    stem = f"eval-{data_dir.resolve().name}" if cfg.data else "eval"
    # Summaries are keyed by split name only, so another dataset's must not share the run's cache.
    summaries_dir = run.dir / ("summaries" if same_data else f"summaries-{data_dir.resolve().name}")
    ceil_path = data_dir / "ceilings.json"
    ceilings = json.loads(ceil_path.read_text()) if ceil_path.is_file() else None
    available = list_splits(data_dir)
    held_out = {run.cfg.train_split, run.cfg.rm.eval_split, "validation"}
    splits = cfg.splits or [s for s in _generator_order(available, ceilings) if s not in held_out]
    missing = [s for s in splits if s not in available]
    if missing or not splits:
        why = (
            f"no split {missing}"
            if missing
            else f"no test split: the run trained and selected on {', '.join(sorted(held_out & set(available)))}, "
            f"and evaluating on them would measure fit, not generalization; add a held-out split file "
            f"(e.g. test.jsonl) or name splits with --splits (e.g. --splits '[validation]', knowing it chose the "
            f"checkpoint)"
        )
        raise EvalError(f"{data_dir}: {why}; available splits: {', '.join(available) or 'none'}")
    return Target(data_dir, stem, summaries_dir, splits, ceilings)


def _generator_order(splits: list[str], ceilings: dict | None) -> list[str]:
    """Splits in ceilings.json's order (the generator's: seen users, unseen users, …), others after."""
    known = [s for s in (ceilings or {}) if s in splits]
    return known + [s for s in splits if s not in known]


def read_examples_for(cfg: EvaluateConfig, run: Run, target: Target, split: str) -> pa.Table:
    examples = read_split(target.data_dir, split, limit=cfg.limit, skip_bad_rows=run.cfg.data.skip_bad_rows)
    if examples.num_rows == 0:
        raise EvalError(f"{target.data_dir}: split '{split}' has no rows")
    return examples


# ------------------------------------------------------------------------------- conditioning


def split_conditioning(examples: pa.Table, split: str, run: Run, target: Target, summaries: list | None) -> list:
    """The conditioning text of every row, as the run trained with it."""
    rm = run.cfg.rm
    try:
        return conditioning_texts(examples, rm.conditioning, summaries, rm.max_context_pairs)
    except ValueError as err:  # e.g. oracle conditioning on data without user_description
        raise EvalError(f"{target.data_dir}/{split}: {err}") from None


def all_summaries(splits: dict[str, pa.Table], run: Run, target: Target, ray_cfg: RayConfig) -> dict:
    """{split: one summary per row} from the run's fixed summarizer (summary conditioning; else Nones): cached
    in target.summaries_dir/<split>.parquet; the uncached splits are summarized together by one actor."""
    if run.cfg.rm.conditioning != "summary":
        return dict.fromkeys(splits)
    from actors import rollout

    c = run.cfg
    tables = {split: (examples, target.summaries_dir / f"{split}.parquet") for split, examples in splits.items()}
    return rollout.cached_summaries_for(tables, c.models, c.rollout, c.rollout_resources, ray_cfg, c.seed)


# ------------------------------------------------------------------------------------ scoring


def load_scorer(run: Run, device: str):
    """(model on device, tokenizer): the checkpoint's tokenizer, else the run's backbone tokenizer."""
    try:
        tokenizer = load_tokenizer(run.checkpoint)
    except CheckpointError:
        print(f"notice: no tokenizer in {run.checkpoint}; using {run.cfg.models.reward_model}", file=sys.stderr)
        tokenizer = load_tokenizer(run.cfg.models.reward_model)
    model = load_reward_model(run.checkpoint, run.cfg.models.dtype, pad_token_id=tokenizer.pad_token_id)
    return model.to(device), tokenizer


def score_pairs(model, tokenizer, examples, conditioning, rm, batch_size: int, device: str, desc: str = "score"):
    """(r_chosen [N], r_rejected [N] as float64 numpy, number of truncated sequences)."""
    chosen, rejected, truncated = [], [], 0
    with torch.inference_mode():
        for start in progress(range(0, examples.num_rows, batch_size), desc=desc, unit="batch", leave=False):
            rows = examples.slice(start, batch_size)
            batch = pair_table(rows, conditioning[start : start + batch_size])
            enc = encode_pairs(tokenizer, batch, rm.max_length, rm.truncation_side)
            enc.input_ids, enc.attention_mask = enc.input_ids.to(device), enc.attention_mask.to(device)
            rc, rr = pair_rewards(model, enc)
            chosen.append(rc.double().cpu().numpy())
            rejected.append(rr.double().cpu().numpy())
            truncated += enc.n_truncated
    return np.concatenate(chosen), np.concatenate(rejected), truncated


SAMPLES_PER_SPLIT = 3


def sample_summaries(examples: pa.Table, summaries: list, k: int) -> list[dict]:
    """The summaries of the first ``k`` distinct users, with the generator's description when the data has one."""
    out, seen = [], set()
    truths = examples.column("user_description").to_pylist() if "user_description" in examples.schema.names else None
    for i, user in enumerate(examples.column("user_id").to_pylist()):
        if user not in seen and len(out) < k:
            seen.add(user)
            out.append({"user_id": user, "summary": summaries[i], "truth": truths[i] if truths else None})
    return out


def split_summary_information(examples: pa.Table, summaries: list) -> dict | None:
    """summary_information of one split's summaries; None without ground truth for every row."""
    if "user_description" not in examples.schema.names:
        return None
    truths = examples.column("user_description").to_pylist()
    if any(t is None for t in truths):
        return None
    return summary_information(examples.column("user_id").to_pylist(), summaries, truths)


def split_metrics(examples: pa.Table, r_chosen: np.ndarray, r_rejected: np.ndarray) -> tuple[dict, dict]:
    """(accuracy by subset, per-user accuracy) of one split's scores."""
    acc = accuracy_by_subset(r_chosen, r_rejected, examples.column("contested").to_pylist())
    users = per_user_accuracy(examples.column("user_id").to_pylist(), pair_correct(r_chosen, r_rejected))
    return acc, users


# ------------------------------------------------------------------------------------- report


def markdown(result: dict) -> str:
    """eval.md: accuracy per split × subset beside the ceilings, then per-user accuracy."""
    ck = result["checkpoint"]
    at = f" @ step {ck['step']}" if ck.get("step") is not None else ""
    lines = [
        f"# Evaluation of `{result['run']}`",
        "",
        f"conditioning `{result['conditioning']}`, seed {result['seed']}, checkpoint {ck['name']}{at}; "
        f"data `{result['data']}`",
        "",
        "Pairwise accuracy (ties count half) beside the dataset's analytic ceilings (expected accuracy of the "
        "oracle, of the best user-agnostic model and of the Bayes posterior given the n context pairs)."
        + (
            f" Only the first {result['limit']} rows per split were scored; the ceilings are the full split's."
            if result.get("limit")
            else ""
        ),
        "",
        "| split | subset | n | accuracy | " + " | ".join(CEILINGS.values()) + " |",
        "|---|---|---:|---:|" + "---:|" * len(CEILINGS),
    ]
    for split, acc in result["accuracy"].items():
        ceil = (result["ceilings"] or {}).get(split, {})
        for subset in SUBSETS:
            n = acc["n"] if subset == "all" else acc[f"n_{subset}"]
            ref = [_fmt((ceil.get(subset) or {}).get(k)) for k in CEILINGS]
            lines.append(f"| {split} | {subset} | {n} | {_fmt(acc[subset])} | " + " | ".join(ref) + " |")
    lines += [
        "",
        "Per user (each user weighs the same):",
        "",
        "| split | users | mean | worst decile | users in worst decile |",
        "|---|---:|---:|---:|---:|",
    ]
    for split, u in result["per_user"].items():
        lines.append(f"| {split} | {u['n_users']} | {_fmt(u['mean'])} | {_fmt(u['worst_decile'])} | {u['n_worst']} |")
    info = {k: v for k, v in (result.get("summary_information") or {}).items() if v}
    if info:
        lines += [
            "",
            "What the summaries say about the ground truth (`user_description`), once per user: "
            "H(truth | summary) of H(truth) bits left open, and how often the truth most common "
            "among users with the same summary is the user's own:",
            "",
            "| split | users | distinct summaries | H(truth) bits | H(truth \\| summary) bits | majority share |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for split, v in info.items():
            lines.append(
                f"| {split} | {v['n_users']} | {v['distinct_summaries']} | {_fmt(v['truth_entropy_bits'])} | "
                f"{_fmt(v['conditional_entropy_bits'])} | {_fmt(v['majority_share'])} |"
            )
    for split, rows in (result.get("sample_summaries") or {}).items():
        lines += ["", f"Sample summaries ({split}):", ""] + summary_lines(rows)
    return "\n".join(lines) + "\n"


def _checkpoint_info(run: Run) -> dict:
    # best.json describes best/ only; after a fallback to last/ its step would be wrong.
    info = run.best if run.checkpoint_name == "best" and run.best else {}
    return {"name": run.checkpoint_name, "path": str(run.checkpoint), **info}


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


# --------------------------------------------------------------------------------------- main


def evaluate(cfg: EvaluateConfig) -> dict:
    """Score every split, write RUN_DIR/<stem>.json and .md; returns the eval.json content."""
    start = time.perf_counter()
    run = load_run(cfg.run, cfg.checkpoint)
    target = resolve_target(cfg, run)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    print(
        f"evaluate: {run.checkpoint} (conditioning {run.cfg.rm.conditioning}) on {target.data_dir}: "
        f"{', '.join(target.splits)} [{device}]"
    )
    model, tokenizer = load_scorer(run, device)
    accuracy, per_user, truncated, samples, information = {}, {}, {}, {}, {}
    splits = {split: read_examples_for(cfg, run, target, split) for split in target.splits}
    summaries = all_summaries(splits, run, target, cfg.ray or run.cfg.ray)
    for split, examples in splits.items():
        cond = split_conditioning(examples, split, run, target, summaries[split])
        if run.cfg.rm.conditioning == "summary":
            samples[split] = sample_summaries(examples, cond, SAMPLES_PER_SPLIT)
            information[split] = split_summary_information(examples, cond)
        rc, rr, truncated[split] = score_pairs(
            model, tokenizer, examples, cond, run.cfg.rm, cfg.batch_size, device, desc=split
        )
        accuracy[split], per_user[split] = split_metrics(examples, rc, rr)
        if truncated[split]:  # the rm.truncation_side decides what was lost (left: the conditioning first)
            rm = run.cfg.rm
            print(
                f"notice: {split}: {truncated[split]} of {2 * examples.num_rows} inputs longer than "
                f"rm.max_length={rm.max_length} were truncated ({rm.truncation_side})",
                file=sys.stderr,
            )
    result = {
        "run": str(run.dir),
        "data": str(target.data_dir),
        "conditioning": run.cfg.rm.conditioning,
        "seed": run.cfg.seed,
        "checkpoint": _checkpoint_info(run),
        "splits": target.splits,
        "limit": cfg.limit,
        "accuracy": accuracy,
        "per_user": per_user,
        "n_truncated": truncated,
        "ceilings": target.ceilings,
        "sample_summaries": samples,
        "summary_information": information,
        "seconds": round(time.perf_counter() - start, 2),
    }
    table = markdown(result)
    (run.dir / f"{target.stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (run.dir / f"{target.stem}.md").write_text(table)
    print(table)
    print(f"wrote {run.dir / target.stem}.json and .md ({result['seconds']:.1f}s)")
    return result


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(EvaluateConfig, argv, prog="jobs.evaluate")
    try:
        return evaluate(cfg)
    except (EvalError, CheckpointError, DataError) as err:
        print(f"jobs.evaluate: error: {err}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()

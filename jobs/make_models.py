"""`python -m jobs.make_models --data DATA_DIR --out OUT_DIR`: a tokenizer and two tiny LM-pre-trained models.

No model hub is reachable, so PLUS on this machine starts from models built here:

1. read every split of the dataset (``rlhf_cluster.data``; a ``train`` split is required);
2. learn a byte-level BPE tokenizer (with the chat template) from the text of ALL splits — vocabulary
   only, no labels, so test text may shape it (unseen-topic words then still encode compactly);
3. build the summarizer and the reward-model backbone (tiny LlamaForCausalLM);
4. pre-train each as a language model on the TRAIN split only — never validation/test text:
   - summarizer: the chat prompts it will read (``prompts.summarizer_messages`` rendered through the
     template), so it learns the words and to copy from its context (RESEARCH-NOTES: PLUS does not
     start from a random-init summarizer), plus the pairs' dialogues, so it knows an assistant turn
     and closes it with the eos token;
   - reward backbone: the reward inputs (``prompts.reward_messages(None, prompt, response)``) for the
     target and context pairs, chosen and rejected alike, so no preference label is learned;
   the validation split (when present) gives a held-out loss before/after;
5. save ``tokenizer/``, ``summarizer/``, ``reward_model/`` (each loads on its own from its path in
   transformers and vLLM) and ``models.json`` (paths relative to OUT_DIR, sizes, loss figures).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from rlhf_cluster import prompts
from rlhf_cluster.builder_config import MakeModelsConfig, TinyModelOptions
from rlhf_cluster.cli import parse_config
from rlhf_cluster.data import DataError, list_splits, read_split
from rlhf_cluster.models import build_llama, count_parameters, pack_documents, pretrain_causal_lm, save_checkpoint
from rlhf_cluster.tokenizer import SPECIAL_TOKENS, save_tokenizer, train_tokenizer

PRETRAIN_SPLIT, EVAL_SPLIT = "train", "validation"


def read_splits(data_dir: str) -> dict[str, pa.Table]:
    """Every split in ``data_dir`` (``<split>.parquet`` / ``.jsonl``), by name; the train split is required."""
    splits = {name: read_split(data_dir, name) for name in list_splits(data_dir)}
    if PRETRAIN_SPLIT not in splits:
        raise DataError(
            f"{data_dir}: no '{PRETRAIN_SPLIT}' split (found: {', '.join(sorted(splits)) or 'none'}); "
            "LM pre-training reads only the train split"
        )
    return splits


# ------------------------------------------------------------------------------------------ text


def tokenizer_texts(splits: dict[str, pa.Table]) -> list[str]:
    """Every text a model may read, from all splits (distinct, in a fixed order)."""
    texts = [prompts.REWARD_CONDITIONING.format(summary="")]
    for table in splits.values():
        for row in table.to_pylist():
            texts.append(prompts.summarizer_messages(row)[0]["content"])
            texts += [row["prompt"], row["chosen"], row["rejected"]]
            # The oracle baseline conditions the reward model on this: its words need tokens too.
            texts.append(row.get("user_description") or "")
    return list(dict.fromkeys(t for t in texts if t))


def summarizer_documents(tokenizer, rows: Sequence[dict]) -> list[str]:
    """The summarizer's prompts, rendered exactly as rollout will render them, then the pairs' dialogues.

    The prompts end at ``<|assistant|>\\n`` with nothing after it; the dialogues show an assistant turn
    (short text from the same world, closed by the eos ``<|end|>``), so sampled summaries start as
    context-like text that ends, not as a new document or an endless one.
    """
    docs = [_render(tokenizer, prompts.summarizer_messages(row), add_generation_prompt=True) for row in rows]
    return list(dict.fromkeys(docs)) + reward_documents(tokenizer, rows)


def reward_documents(tokenizer, rows: Sequence[dict]) -> list[str]:
    """Unconditioned reward inputs of every target and context pair, chosen and rejected alike."""
    pairs = [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    pairs += [(p["prompt"], p["chosen"], p["rejected"]) for r in rows for p in r["context"] or []]
    docs = [
        _render(tokenizer, prompts.reward_messages(None, prompt, response), add_generation_prompt=False)
        for prompt, chosen, rejected in pairs
        for response in (chosen, rejected)
    ]
    return list(dict.fromkeys(docs))


def response_documents(tokenizer, rows: Sequence[dict]) -> list[str]:
    """The response policy's corpus: each contested target pair's responses (all pairs' when no row has a
    contested flag), chosen and rejected alike — so the base policy prefers neither — rendered as the
    reward model reads them, once with no conditioning turn and once with a context pair of the same
    user in it (the policy will read a summary there)."""
    flagged = any(r.get("contested") is not None for r in rows)
    docs = []
    for r in rows:
        if flagged and not r.get("contested"):
            continue
        pair = (r["context"] or [None])[0]
        hint = None if pair is None else prompts.render_context([pair])
        for conditioning in (None, hint):
            for response in (r["chosen"], r["rejected"]):
                docs.append(_render(tokenizer, prompts.reward_messages(conditioning, r["prompt"], response), False))
    return list(dict.fromkeys(docs))


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


# ---------------------------------------------------------------------------------------- models


def make_model(
    cfg: MakeModelsConfig,
    name: str,
    opts: TinyModelOptions,
    tokenizer,
    docs: list[str],
    eval_docs: list[str],
    seed: int,
) -> dict:
    """Build, pre-train and save one model; its manifest entry."""
    model = build_llama(opts, tokenizer, seed)
    n_params = count_parameters(model)
    print(f"[{name}] LlamaForCausalLM {n_params:,} parameters; corpus {len(docs)} documents")
    report = None
    if cfg.pretrain_steps > 0:
        report = pretrain_causal_lm(
            model,
            pack_documents(tokenizer, docs),
            steps=cfg.pretrain_steps,
            batch_size=cfg.pretrain_batch_size,
            seq_len=min(cfg.pretrain_seq_len, opts.max_position_embeddings),
            lr=cfg.pretrain_lr,
            seed=seed,
            eval_stream=pack_documents(tokenizer, eval_docs) if eval_docs else None,
            boundary_token_id=tokenizer.bos_token_id,
            log_every=cfg.log_every,
            name=name,
        )
        _print_summary(name, report)
    save_checkpoint(model, tokenizer, Path(cfg.out) / name)
    return {
        "path": name,
        "architecture": "LlamaForCausalLM",
        "parameters": n_params,
        "shape": opts.model_dump(),
        "seed": seed,
        "corpus_documents": len(docs),
        "pretrain": report,
    }


def _print_summary(name: str, r: dict) -> None:
    before, after = r["eval_loss_before"], r["eval_loss_after"]
    held_out = f"; held-out {before:.4f} -> {after:.4f}" if before is not None else ""
    print(
        f"[{name}] loss {r['initial_loss']:.4f} -> {r['final_loss']:.4f}{held_out} "
        f"in {r['seconds']:.1f} s ({r['tokens_per_s']:,} tok/s)"
    )
    if r["final_loss"] >= r["initial_loss"]:
        print(f"[{name}] WARNING: pre-training loss did not go down; lower pretrain_lr or check the corpus")


def make_models(cfg: MakeModelsConfig) -> dict:
    """The whole job; returns the manifest that it also writes to ``OUT_DIR/models.json``."""
    start = time.perf_counter()
    splits = read_splits(cfg.data)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tokenizer(tokenizer_texts(splits), cfg.vocab_size)
    print(f"[tokenizer] byte-level BPE, {len(tokenizer)} tokens (limit {cfg.vocab_size}) from splits {sorted(splits)}")
    shapes = [cfg.summarizer, cfg.reward_model] + ([cfg.response_policy] if cfg.response_policy else [])
    max_len = max(s.max_position_embeddings for s in shapes)
    save_tokenizer(tokenizer, out / "tokenizer", model_max_length=max_len)

    train_rows = splits[PRETRAIN_SPLIT].to_pylist()
    eval_rows = splits[EVAL_SPLIT].to_pylist() if EVAL_SPLIT in splits else []
    manifest = {
        "data": str(Path(cfg.data).resolve()),
        "seed": cfg.seed,
        "tokenizer": {
            "path": "tokenizer",
            "vocab_size": len(tokenizer),
            "special_tokens": SPECIAL_TOKENS,
            "eos_token": tokenizer.eos_token,
            "splits": sorted(splits),
        },
        "pretrain_split": PRETRAIN_SPLIT,
        "eval_split": EVAL_SPLIT if eval_rows else None,
    }
    # Different seeds per model, so the two never share an initialisation by accident.
    manifest["summarizer"] = make_model(
        cfg,
        "summarizer",
        cfg.summarizer,
        tokenizer,
        summarizer_documents(tokenizer, train_rows),
        summarizer_documents(tokenizer, eval_rows),
        cfg.seed,
    )
    manifest["reward_model"] = make_model(
        cfg,
        "reward_model",
        cfg.reward_model,
        tokenizer,
        reward_documents(tokenizer, train_rows),
        reward_documents(tokenizer, eval_rows),
        cfg.seed + 1,
    )
    manifest["reward_model"]["load_as"] = "AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)"
    if cfg.response_policy is not None:
        docs = [response_documents(tokenizer, rows) for rows in (train_rows, eval_rows)]
        manifest["response_policy"] = make_model(
            cfg, "response_policy", cfg.response_policy, tokenizer, *docs, cfg.seed + 2
        )
    manifest["seconds"] = round(time.perf_counter() - start, 2)
    (out / "models.json").write_text(json.dumps(manifest, indent=2) + "\n")
    built = ",".join(k for k in ("tokenizer", "summarizer", "reward_model", "response_policy") if k in manifest)
    print(f"[make_models] wrote {out}/{{{built},models.json}} in {manifest['seconds']:.1f} s")
    return manifest


def main(argv: Sequence[str] | None = None) -> None:
    make_models(parse_config(MakeModelsConfig, argv, prog="jobs.make_models"))


if __name__ == "__main__":
    main()

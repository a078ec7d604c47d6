"""Models by local path: load any HF checkpoint dir, build tiny Llama models, pre-train them briefly.

Loading (``load_tokenizer``, ``load_causal_lm``, ``load_reward_model``) works for the tiny models
that ``jobs/make_models.py`` writes and unchanged for a real local checkpoint such as Qwen2.5-0.5B:
nothing assumes our special tokens. A path is always a local directory — no hub look-ups — and a
missing or incomplete one fails with a ``CheckpointError`` that names the path and what was expected.

Tiny models are ``LlamaForCausalLM`` (an architecture vLLM serves on CPU and GPU). The reward-model
backbone is saved as a causal LM too, so that it can be LM-pre-trained and loaded by anything;
``AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)`` (``load_reward_model``)
takes its ``model.*`` weights and adds a freshly initialised scalar ``score`` head.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlhf_cluster.builder_config import TinyModelOptions

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class CheckpointError(FileNotFoundError):
    """A path that is not the checkpoint (or tokenizer) directory the caller asked for."""


# ------------------------------------------------------------------------------------- loading


def check_checkpoint_dir(path: str | Path, need_weights: bool = True, need_tokenizer: bool = False) -> Path:
    """``path`` as a Path if it is a local HF checkpoint directory; else a ``CheckpointError`` saying why."""
    p = Path(path).expanduser()
    expected = "a local Hugging Face checkpoint directory (from save_pretrained: config.json + weights)"
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory; expected {expected}")
    if not p.is_dir():
        raise CheckpointError(f"{p}: is a file, not a directory; expected {expected}")
    if need_weights and not (p / "config.json").is_file():
        raise CheckpointError(f"{p}: no config.json; expected {expected}")
    if need_weights and not any(any(p.glob(pat)) for pat in WEIGHT_PATTERNS):
        raise CheckpointError(f"{p}: no weight files ({', '.join(WEIGHT_PATTERNS)}); expected {expected}")
    if need_tokenizer and not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise CheckpointError(
            f"{p}: no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); expected a directory "
            "written by tokenizer.save_pretrained"
        )
    return p


def load_tokenizer(path: str | Path, padding_side: str = "left") -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``path``. Left padding by default (batched generation); a tokenizer
    without a pad token pads with its eos token."""
    p = check_checkpoint_dir(path, need_weights=False, need_tokenizer=True)
    tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CheckpointError(f"{p}: tokenizer has neither a pad nor an eos token; cannot pad batches")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_causal_lm(path: str | Path, dtype: str | torch.dtype = "float32") -> PreTrainedModel:
    """The causal LM saved in ``path``, in eval mode."""
    p = check_checkpoint_dir(path)
    model = AutoModelForCausalLM.from_pretrained(str(p), dtype=resolve_dtype(dtype), local_files_only=True)
    return model.eval()


def load_reward_model(
    path: str | Path, dtype: str | torch.dtype = "float32", pad_token_id: int | None = None
) -> PreTrainedModel:
    """A scalar-head sequence classifier (``num_labels=1``) on the backbone in ``path``.

    A causal-LM checkpoint gets a fresh ``score`` head (transformers warns that it is newly
    initialised — expected). The head reads the last non-pad token, so the config needs a pad id:
    pass the tokenizer's if the checkpoint's config has none (many real checkpoints don't).
    """
    p = check_checkpoint_dir(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(p), num_labels=1, dtype=resolve_dtype(dtype), local_files_only=True
    )
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model.eval()


def load_value_model(path: str | Path, dtype: str | torch.dtype = "float32") -> PreTrainedModel:
    """A scalar per-token head (``num_labels=1`` token classifier, no dropout) on the backbone in
    ``path``: the PPO critic. A causal-LM checkpoint gets a fresh ``score`` head (expected warning)."""
    p = check_checkpoint_dir(path)
    config = AutoConfig.from_pretrained(str(p), num_labels=1, local_files_only=True)
    config.classifier_dropout = 0.0
    model = AutoModelForTokenClassification.from_pretrained(
        str(p), config=config, dtype=resolve_dtype(dtype), local_files_only=True
    )
    return model.eval()


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------ building


def build_llama(opts: TinyModelOptions, tokenizer: PreTrainedTokenizerBase, seed: int) -> LlamaForCausalLM:
    """A randomly initialised tiny Llama sized by ``opts``, its vocabulary and special ids from ``tokenizer``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=opts.hidden_size,
        intermediate_size=opts.intermediate_size,
        num_hidden_layers=opts.num_layers,
        num_attention_heads=opts.num_heads,
        num_key_value_heads=opts.num_heads,
        max_position_embeddings=opts.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # Tied input/output embeddings: at this size the embedding is most of the parameters.
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float().eval()


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> Path:
    """``save_pretrained`` of model and tokenizer into one directory that loads on its own."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(p))
    tokenizer.model_max_length = model.config.max_position_embeddings
    tokenizer.save_pretrained(str(p))
    return p


# --------------------------------------------------------------------------------- pre-training


def pack_documents(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> torch.Tensor:
    """One long token stream of ``texts`` (each already rendered, bos included), for LM windows."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return torch.tensor([t for doc in ids for t in doc], dtype=torch.long)


def pretrain_causal_lm(
    model: PreTrainedModel,
    stream: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    lr: float,
    seed: int,
    eval_stream: torch.Tensor | None = None,
    boundary_token_id: int | None = None,
    log_every: int = 25,
    name: str = "lm",
    log: Callable[[str], None] = print,
) -> dict:
    """Next-token pre-training on random windows of ``stream`` (AdamW, warmup + cosine, clip 1.0).

    ``boundary_token_id`` (the bos that starts each packed document) is never a target: predicting
    the next document's start is noise, and would teach a summarizer that ``<|assistant|>\n`` is
    followed by a new document. Deterministic in ``seed``: windows come from a seeded generator.
    Returns the loss summary:
    initial/final train loss (final = mean of the last 10 steps), held-out loss before/after on
    ``eval_stream`` when given, the logged curve, seconds and tokens/s.
    """
    seq_len = min(seq_len, len(stream) - 1)  # a tiny corpus: shorter windows rather than a crash
    if seq_len < 2:
        raise ValueError(f"{name}: corpus has {len(stream)} tokens, too few to pre-train on")
    eval_windows = _fixed_windows(eval_stream, seq_len) if eval_stream is not None else None
    report = {"steps": steps, "batch_size": batch_size, "seq_len": seq_len, "lr": lr, "corpus_tokens": len(stream)}
    report["eval_loss_before"] = _mean_loss(model, eval_windows, boundary_token_id)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(steps))
    losses, curve, start = [], [], time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        x = _random_windows(stream, batch_size, seq_len + 1, gen)
        loss = model(input_ids=x, labels=_labels(x, boundary_token_id)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step == 1 or step % log_every == 0 or step == steps:
            secs = time.perf_counter() - start
            curve.append([step, round(losses[-1], 4)])
            log(
                f"[{name}] step {step}/{steps} loss {losses[-1]:.4f} lr {sched.get_last_lr()[0]:.2e} "
                f"tok/s {step * batch_size * seq_len / secs:,.0f}"
            )
    model.eval()
    seconds = time.perf_counter() - start
    report.update(
        initial_loss=losses[0] if losses else None,
        final_loss=sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        eval_loss_after=_mean_loss(model, eval_windows, boundary_token_id),
        loss_curve=curve,
        seconds=round(seconds, 2),
        tokens_per_s=round(steps * batch_size * seq_len / seconds) if steps else None,
    )
    return report


def _warmup_cosine(steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup over the first 10 % of steps, cosine decay to 10 % at the end."""
    warmup = max(1, steps // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _random_windows(stream: torch.Tensor, batch_size: int, length: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(stream) - length + 1, (batch_size,), generator=gen)
    return torch.stack([stream[s : s + length] for s in starts.tolist()])


def _fixed_windows(stream: torch.Tensor, seq_len: int, max_windows: int = 16) -> torch.Tensor | None:
    """Non-overlapping windows from the start of ``stream`` (the same ones before and after training)."""
    n = min(max_windows, len(stream) // seq_len)
    return stream[: n * seq_len].view(n, seq_len) if n else None


def _labels(x: torch.Tensor, boundary_token_id: int | None) -> torch.Tensor:
    """Targets = inputs (the model shifts them), with document starts ignored (-100)."""
    return x if boundary_token_id is None else x.masked_fill(x == boundary_token_id, -100)


@torch.no_grad()
def _mean_loss(model: PreTrainedModel, windows: torch.Tensor | None, boundary_token_id: int | None) -> float | None:
    if windows is None:
        return None
    model.eval()
    return round(model(input_ids=windows, labels=_labels(windows, boundary_token_id)).loss.item(), 4)

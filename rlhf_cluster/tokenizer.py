"""The project's own tokenizer: byte-level BPE learned from a dataset's text, with a chat template.

No model hub is reachable, so the tiny models get a tokenizer trained here with the `tokenizers`
library and saved as a transformers fast tokenizer. Byte-level BPE never needs <unk> (every string
encodes, and decodes back exactly); the vocabulary holds the 256 byte tokens, the special tokens
below, and as many merges as fit under ``vocab_size``.

Chat format (one template string, so transformers, vLLM and our own code render alike)::

    <|bos|><|user|>\\n{content}<|end|>\\n<|assistant|>\\n{content}<|end|>\\n

``add_generation_prompt=True`` appends ``<|assistant|>\\n``. The end-of-turn token ``<|end|>`` is the
eos token, so generation stops when the assistant's turn ends (after the summary). The template
starts with the bos token; encode rendered text with ``add_special_tokens=False`` (as
``rlhf_cluster.prompts.chat_token_ids`` does) — the tokenizer adds nothing on its own either way. Use
``chat_token_ids`` for chats with user text: it keeps a message that spells ``<|end|>`` from becoming one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, END = "<|pad|>", "<|unk|>", "<|bos|>", "<|end|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = [PAD, UNK, BOS, END, *ROLE_TOKENS.values()]  # ids 0..6 in this order

# Unknown roles fail loudly rather than render as a marker the model never saw.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """Learn a byte-level BPE tokenizer (≤ ``vocab_size`` tokens) from ``texts``; deterministic in its input."""
    min_size = 256 + len(SPECIAL_TOKENS)
    if vocab_size < min_size:
        raise ValueError(f"vocab_size {vocab_size} < {min_size} (256 byte tokens + {len(SPECIAL_TOKENS)} special)")
    return wrap_tokenizer(byte_level_bpe(texts, vocab_size, SPECIAL_TOKENS, unk_token=UNK), model_max_length)


def byte_level_bpe(
    texts: Iterable[str], vocab_size: int, special_tokens: list[str], unk_token: str | None = None
) -> Tokenizer:
    """A byte-level BPE ``tokenizers.Tokenizer`` learned from ``texts``, ``special_tokens`` first in its vocabulary."""
    tok = Tokenizer(models.BPE(unk_token=unk_token))
    # GPT-2 style: split words/punctuation/whitespace by regex, map bytes to printable symbols.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def wrap_tokenizer(tok: Tokenizer, model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around a `tokenizers` one: special tokens, chat template, left padding."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=END,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=list(ROLE_TOKENS.values()),
        chat_template=CHAT_TEMPLATE,
        padding_side="left",  # generation batches: prompts end where sampling starts
        model_max_length=model_max_length,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | Path, model_max_length: int | None = None) -> None:
    """Save with ``save_pretrained``; ``model_max_length`` overrides the limit written to this copy."""
    if model_max_length is not None:
        tokenizer.model_max_length = model_max_length
    tokenizer.save_pretrained(str(path))

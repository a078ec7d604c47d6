"""Ray Serve app: the personalized reward endpoint (PLUS summarizer + summary-conditioned reward model).

    export RLHF_SERVE_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(16))')
    serve run deploy.serve:build_app run_dir=runs/demo/plus      # http://127.0.0.1:8000/docs
    serve run deploy/serve.yaml                                   # the same from the YAML next to this file

Three deployments, composed through deployment handles:

  Ingress       FastAPI (deploy/api.py): bearer auth, limits, the SQLite summary store, conditioning
   ├─ Summarizer   context → summary on rollout.backend (hf or vllm); serve.batch over contexts
   └─ RewardModel  (conditioning, prompt, responses) → rewards; serve.batch over responses

The reward model scores exactly as the offline path does (``rlhf_cluster.reward_model``:
``encode_sequences`` → ``sequence_rewards``), so an endpoint reward equals ``jobs.evaluate``'s for
the same checkpoint, conditioning text, prompt and response. Builder arguments are ServeConfig keys
(``rlhf_cluster/config.py``; dotted keys or nested mappings; ``config=FILE.yaml`` reads a file first).
Each response's ``truncated`` flag says its input was cut to max_length; the RewardModel replicas also
count inputs in Ray Serve metrics (Prometheus, on Ray's metrics export port):
``ray_rlhf_reward_inputs_total`` and ``ray_rlhf_reward_inputs_truncated_total``; their ratio is the share cut.
This module imports no torch: the ingress replica stays light; model deployments import in __init__.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from deploy.api import ApiError, ApiSettings, Scored, build_api
from rlhf_cluster.cli import ConfigError, load_config
from rlhf_cluster.config import RolloutConfig
from rlhf_cluster.runs import read_run
from rlhf_cluster.serve_config import BatchedServeDeployment, ServeAuth, ServeConfig, ServeDeployment, ServeLimits
from rlhf_cluster.summary_store import SummaryStore

DEFAULT_RUN_DIR = "runs/demo/plus"  # what `serve run deploy.serve:app` serves without $RLHF_SERVE_CONFIG


# ----------------------------------------------------------------------------------- models to serve


@dataclasses.dataclass(frozen=True)
class ServedModels:
    """Resolved checkpoint paths (absolute) and how the reward model reads its conditioning."""

    reward_model: str
    reward_tokenizer: str  # the reward checkpoint's own tokenizer, else the run's backbone's
    summarizer: str | None
    conditioning: str  # bt | oracle | context | summary
    max_length: int
    truncation_side: str
    max_context_pairs: int | None  # the run's: context conditioning shows at most this many pairs
    source: str  # for the start-up message


def resolve_models(cfg: ServeConfig) -> ServedModels:
    """Checkpoints and reward settings from ``cfg.run_dir`` (if any) with ``cfg``'s explicit values on top."""
    run = read_run(Path(cfg.run_dir), cfg.checkpoint) if cfg.run_dir else {}
    reward_model = cfg.models.reward_model or run.get("reward_model")
    summarizer = cfg.models.summarizer or run.get("summarizer")
    rm_path = _checkpoint(reward_model, "reward model")
    summ_path = _checkpoint(summarizer, "summarizer", tokenizer=True) if summarizer else None
    return ServedModels(
        reward_model=rm_path,
        reward_tokenizer=_tokenizer_dir(rm_path, run.get("backbone")),
        summarizer=summ_path,
        conditioning=cfg.conditioning or run.get("conditioning", "summary"),
        max_length=cfg.max_length or run.get("max_length", 512),
        truncation_side=cfg.truncation_side or run.get("truncation_side", "keep_conditioning"),
        max_context_pairs=run.get("max_context_pairs"),
        source=run.get("source", "explicit checkpoint paths"),
    )


def _checkpoint(path: str | None, what: str, tokenizer: bool = False) -> str:
    from rlhf_cluster.models import CheckpointError, check_checkpoint_dir

    if not path:
        raise ConfigError(f"  no {what} checkpoint: give run_dir or models.{what.replace(' ', '_')}")
    try:
        return str(check_checkpoint_dir(path, need_tokenizer=tokenizer).resolve())
    except CheckpointError as err:
        raise ConfigError(f"  {what} checkpoint: {err}") from None


def _tokenizer_dir(checkpoint: str, backbone: str | None) -> str:
    from rlhf_cluster.models import CheckpointError, check_checkpoint_dir

    for path in [p for p in (checkpoint, backbone) if p]:
        try:
            return str(check_checkpoint_dir(path, need_weights=False, need_tokenizer=True).resolve())
        except CheckpointError:
            continue
    raise ConfigError(f"  reward model {checkpoint}: no tokenizer files in it or in the run's backbone ({backbone})")


def has_reward_head(checkpoint: str) -> bool:
    """Whether the checkpoint was saved as a sequence classifier (a trained head), not a bare backbone."""
    architectures = json.loads((Path(checkpoint) / "config.json").read_text()).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in architectures)


def resolve_token(auth: ServeAuth) -> SecretStr:
    """The API token: auth.token, else $auth.token_env; refuses to start without one."""
    if auth.token is not None and auth.token.get_secret_value().strip():
        return auth.token
    value = os.environ.get(auth.token_env, "").strip()
    if not value:
        raise ConfigError(
            f"  no API token: set ${auth.token_env} (auth.token_env) or auth.token; every route but /healthz "
            "and /readyz needs it"
        )
    if len(value) < 16:
        print(f"notice: ${auth.token_env} is {len(value)} characters; use at least 16 random ones", file=sys.stderr)
    return SecretStr(value)


# -------------------------------------------------------------------------------------- deployments


def _limit_threads(num_cpus: float) -> None:
    """Torch threads = the replica's whole reserved CPUs (at least 1), so replicas don't oversubscribe."""
    import torch

    torch.set_num_threads(max(1, int(num_cpus)))


@dataclasses.dataclass
class SummaryJob:
    context: list[dict]
    context_messages: list[dict]
    max_context_pairs: int | None


@dataclasses.dataclass
class SummaryResult:
    text: str | None = None
    error: str | None = None  # the request's fault (its prompt does not fit): the ingress answers 422


@serve.deployment
class Summarizer:
    """The summarizer LLM: one greedy (by default) summary per context, batched over concurrent requests."""

    def __init__(self, checkpoint: str, rollout: RolloutConfig, dtype: str, seed: int, opts: BatchedServeDeployment):
        _limit_threads(opts.resources.num_cpus)
        from rlhf_cluster.generation import make_engine
        from rlhf_cluster.models import load_tokenizer

        self.tokenizer = load_tokenizer(checkpoint)
        self.engine = make_engine(checkpoint, rollout, dtype, seed)
        self.seed, self.max_context_pairs = seed, rollout.max_context_pairs
        self.budget = rollout.max_model_len - rollout.max_new_tokens
        self.generate.set_max_batch_size(opts.max_batch_size)
        self.generate.set_batch_wait_timeout_s(opts.batch_wait_timeout_s)

    async def ping(self) -> bool:
        return True

    async def summarize(self, job: SummaryJob) -> SummaryResult:
        from rlhf_cluster.prompts import chat_token_ids, summarizer_messages

        pairs = job.max_context_pairs if job.max_context_pairs is not None else self.max_context_pairs
        messages = summarizer_messages({"context": job.context, "context_messages": job.context_messages}, pairs)
        ids = await asyncio.to_thread(chat_token_ids, self.tokenizer, messages)  # long contexts: off the loop
        if len(ids) > self.budget:
            return SummaryResult(
                error=(
                    f"the summarizer prompt for this context is {len(ids)} tokens; at most {self.budget} fit "
                    "(rollout.max_model_len − rollout.max_new_tokens): send fewer or shorter items, or set "
                    "max_context_pairs"
                )
            )
        return SummaryResult(text=await self.generate(ids))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def generate(self, prompts: list[list[int]]) -> list[str]:
        # Off the event loop, so requests keep arriving (and forming the next batch) while the model runs.
        samples = await asyncio.to_thread(self.engine.generate, prompts, [self.seed] * len(prompts))
        return [s[0].text.strip() for s in samples]


@dataclasses.dataclass
class ScoreJob:
    conditioning: str | None  # None: the plain Bradley–Terry input (a bt run)
    prompt: str
    responses: list[str]


@dataclasses.dataclass
class ScoreResult:
    rewards: list[float]
    truncated: list[bool]
    cut: list[tuple[str, ...]] = dataclasses.field(default_factory=list)  # per response: the fields cut
    error: str | None = None  # the conditioning itself does not fit max_length: the client's to shorten


def count_responses(jobs: list[ScoreJob]) -> int:
    """serve.batch size of a batch of score jobs: sequences in one forward pass."""
    return sum(len(job.responses) for job in jobs)


@serve.deployment
class RewardModel:
    """r(prompt, response | conditioning) at the last real token, batched over concurrent requests' responses."""

    def __init__(self, models: ServedModels, dtype: str, seed: int, opts: BatchedServeDeployment):
        _limit_threads(opts.resources.num_cpus)
        import torch

        from rlhf_cluster.models import load_reward_model, load_tokenizer

        self.tokenizer = load_tokenizer(models.reward_tokenizer, padding_side="right")
        torch.manual_seed(seed)  # a bare backbone's fresh head: the same in every replica (smoke tests only)
        model = load_reward_model(models.reward_model, dtype, pad_token_id=self.tokenizer.pad_token_id)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.to(self.device)
        self.max_length, self.truncation_side = models.max_length, models.truncation_side
        self.score.set_max_batch_size(opts.max_batch_size)
        self.score.set_batch_wait_timeout_s(opts.batch_wait_timeout_s)
        self.n_inputs = serve.metrics.Counter("rlhf_reward_inputs", "Reward inputs scored (one per response).")
        self.n_truncated = serve.metrics.Counter(
            "rlhf_reward_inputs_truncated", "Reward inputs longer than max_length, cut from truncation_side."
        )

    async def ping(self) -> bool:
        return True

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005, batch_size_fn=count_responses)
    async def score(self, jobs: list[ScoreJob]) -> list[ScoreResult]:
        results = await asyncio.to_thread(self._score, jobs)
        self.n_inputs.inc(sum(len(r.truncated) for r in results))
        if cut := sum(sum(r.truncated) for r in results):  # a Counter takes increments > 0 only
            self.n_truncated.inc(cut)
        return results

    def _score(self, jobs: list[ScoreJob]) -> list[ScoreResult]:
        import torch

        from rlhf_cluster.reward_model import encode_sequences, sequence_rewards

        flat = [(job.conditioning, job.prompt, r) for job in jobs for r in job.responses]
        cond, prompts, responses = (list(col) for col in zip(*flat))
        enc = encode_sequences(self.tokenizer, cond, prompts, responses, self.max_length, self.truncation_side)
        with torch.inference_mode():
            rewards = (
                sequence_rewards(self.model, enc.input_ids.to(self.device), enc.attention_mask.to(self.device))
                .cpu()
                .tolist()
            )
        results, start = [], 0
        for job in jobs:
            end = start + len(job.responses)
            cut = enc.cut[start:end]
            error = None
            if any("conditioning" in c for c in cut) and self.truncation_side == "keep_conditioning":
                error = (
                    f"the conditioning text is too long: with the prompt and response cut to nothing it still "
                    f"exceeds the reward model's max_length={self.max_length} tokens; send a shorter one"
                )
            results.append(ScoreResult(rewards[start:end], enc.truncated[start:end], cut, error))
            start = end
        return results


@dataclasses.dataclass(frozen=True)
class IngressSettings:
    token: SecretStr
    limits: ServeLimits
    public_docs: bool
    store_path: str
    conditioning: str
    max_context_pairs: int | None


class ModelGate:
    """A model deployment's handle as the ingress calls it: the deployment's trouble becomes a 503 with
    Retry-After for the client, never a 500 or an open-ended wait.

    When a replica dies, Serve's router holds the requests sent to it until the controller notices (its
    health check) and a new replica is up: 10-25 s of silence. So a call not answered within
    PROBE_AFTER_S has the deployment pinged (PROBE_TIMEOUT_S): no answer, or a call that fails because
    the replica died (or the deployment has none, or sheds load), marks the deployment down and answers
    503. While it is down, requests get 503 at once and a background ping (at most one at a time) finds
    out when it answers again. A call that is slow while the deployment does answer waits up to
    ``timeout_s`` (limits.model_timeout_s), then 503.
    """

    PROBE_AFTER_S = 2.0
    PROBE_TIMEOUT_S = 2.0

    def __init__(self, name: str, handle: DeploymentHandle, timeout_s: float, retry_after_s: int):
        self.name, self.handle, self.timeout_s, self.retry_after_s = name, handle, timeout_s, retry_after_s
        self.down, self._probe = False, None

    async def call(self, method: str, *args):
        if self.down:
            if self._probe is None or self._probe.done():
                self._probe = asyncio.ensure_future(self.ready())
            raise self._unavailable("is down (its replica died) and is being restarted")
        response = getattr(self.handle, method).remote(*args)
        task = asyncio.ensure_future(_result(response))
        try:
            done, _ = await asyncio.wait({task}, timeout=min(self.PROBE_AFTER_S, self.timeout_s))
            if not done and not await self.ready():
                raise self._unavailable("does not answer (its replica may have died)")
            return await asyncio.wait_for(asyncio.shield(task), self.timeout_s)
        except asyncio.TimeoutError:
            raise self._unavailable(f"did not answer within {self.timeout_s:g} s (limits.model_timeout_s)") from None
        except _DOWN_ERRORS as err:
            self.down = True
            raise self._unavailable(f"is unavailable ({type(err).__name__})") from None
        finally:
            if not task.done():
                task.add_done_callback(_retrieve)  # its RequestCancelledError is expected, not news for the log
                task.cancel()
                response.cancel()

    async def ready(self) -> bool:
        """Whether the deployment answers a ping now; marks it down (or up again) accordingly."""
        response = self.handle.ping.remote()
        try:
            await asyncio.wait_for(_result(response), self.PROBE_TIMEOUT_S)
        except (asyncio.TimeoutError, *_DOWN_ERRORS):
            response.cancel()
            self.down = True
            return False
        self.down = False
        return True

    def _unavailable(self, why: str) -> ApiError:
        headers = {"Retry-After": str(self.retry_after_s)}
        return ApiError(503, f"the {self.name} {why}; retry in {self.retry_after_s} s", headers=headers)


async def _result(response):
    return await response


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


def _down_errors() -> tuple[type[BaseException], ...]:
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    return RayActorError, ActorUnavailableError, DeploymentUnavailableError, BackPressureError


_DOWN_ERRORS = _down_errors()


@serve.deployment
@serve.ingress()
class Ingress:
    """HTTP front (deploy/api.py routes) over the summarizer and reward-model handles and the summary store."""

    def __init__(self, reward_model: DeploymentHandle, summarizer: DeploymentHandle | None, settings: IngressSettings):
        timing = settings.limits.model_timeout_s, settings.limits.retry_after_s
        self.reward_model = ModelGate("reward model", reward_model, *timing)
        self.summarizer = ModelGate("summarizer", summarizer, *timing) if summarizer is not None else None
        self.settings, self.store = settings, SummaryStore(settings.store_path)

    def __serve_build_asgi_app__(self):
        s = self.settings
        return build_api(self, ApiSettings(s.token.get_secret_value(), s.limits, s.public_docs))

    async def summarize(self, context: list[dict], context_messages: list[dict], max_context_pairs: int | None) -> str:
        if self.summarizer is None:
            raise ApiError(
                422,
                "this endpoint has no summarizer (start it with models.summarizer): "
                "send user_id or summary instead of a context",
                field="context",
            )
        result = await self.summarizer.call("summarize", SummaryJob(context, context_messages, max_context_pairs))
        if result.error:
            raise ApiError(422, result.error, field="context")
        return result.text

    async def context_conditioning(self, body) -> tuple[str, str]:
        pairs = [p.model_dump() for p in body.context]
        messages = [m.model_dump() for m in body.context_messages]
        if self.settings.conditioning == "context":  # an in-context reward model reads the history itself
            from rlhf_cluster.prompts import render_context

            limit = body.max_context_pairs if body.max_context_pairs is not None else self.settings.max_context_pairs
            return render_context(pairs, messages, limit), "context"
        return await self.summarize(pairs, messages, body.max_context_pairs), "summarized"

    async def score(self, conditioning: str, prompt: str, responses: list[str]) -> Scored:
        text = None if self.settings.conditioning == "bt" else conditioning
        result = await self.reward_model.call("score", ScoreJob(text, prompt, responses))
        return Scored(result.rewards, [list(c) for c in result.cut], result.error)

    async def ready(self) -> dict[str, bool]:
        gates = {"reward_model": self.reward_model, **({"summarizer": self.summarizer} if self.summarizer else {})}
        up = await asyncio.gather(*(gate.ready() for gate in gates.values()))
        return dict(zip(gates, up))


# ------------------------------------------------------------------------------------------- builder


def config_from_args(args: Mapping[str, Any]) -> ServeConfig:
    """ServeConfig from builder args: ``config`` (a YAML file) first, then the other keys as overrides.

    Keys may be dotted (``limits.max_responses=4`` from ``serve run``) or nested (``args:`` in
    serve.yaml); errors are ConfigErrors naming the key, as every job's command line reports them.
    """
    args = dict(args)
    argv = ["--config", str(args.pop("config"))] if args.get("config") else []
    for key, value in _flatten(args):
        argv.append(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
    return load_config(ServeConfig, argv)


def _flatten(args: Mapping[str, Any], prefix: str = ""):
    for key, value in args.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _options(d: ServeDeployment) -> dict:
    return {
        "num_replicas": d.num_replicas,
        "max_ongoing_requests": d.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": d.resources.num_cpus, "num_gpus": d.resources.num_gpus},
    }


def build_app(args: Mapping[str, Any] | ServeConfig | None = None) -> Application:
    """The bound Serve application for ``args`` (ServeConfig keys, or a ServeConfig)."""
    cfg = args if isinstance(args, ServeConfig) else config_from_args(args or {})
    models = resolve_models(cfg)
    token = resolve_token(cfg.auth)
    if not has_reward_head(models.reward_model):
        print(
            f"notice: {models.reward_model} is a bare backbone: its reward head is untrained (seed {cfg.seed})",
            file=sys.stderr,
        )
    store_path = str(Path(cfg.store_path).expanduser().resolve())
    try:  # fail here, with the path, rather than in the ingress replica's constructor
        SummaryStore(store_path)
    except (OSError, sqlite3.Error) as err:
        raise ConfigError(f"  store_path {store_path}: cannot open the summary store: {err}") from None
    print(
        f"serve: {models.source}; conditioning={models.conditioning}; summarizer="
        f"{models.summarizer or 'none'} ({cfg.rollout.backend}); store {store_path}",
        flush=True,
    )
    deps = cfg.deployments
    reward_model = RewardModel.options(**_options(deps.reward_model)).bind(
        models, cfg.models.dtype, cfg.seed, deps.reward_model
    )
    summarizer = None
    if models.summarizer:
        summarizer = Summarizer.options(**_options(deps.summarizer)).bind(
            models.summarizer, cfg.rollout, cfg.models.dtype, cfg.seed, deps.summarizer
        )
    settings = IngressSettings(
        token, cfg.limits, cfg.auth.public_docs, store_path, models.conditioning, models.max_context_pairs
    )
    return Ingress.options(**_options(deps.ingress)).bind(reward_model, summarizer, settings)


def __getattr__(name: str):
    """``deploy.serve:app``, built on first access (so importing this module needs no run directory):
    from the ServeConfig YAML in $RLHF_SERVE_CONFIG, else the demo's PLUS run."""
    if name == "app":
        path = os.environ.get("RLHF_SERVE_CONFIG")
        return build_app({"config": path} if path else {"run_dir": DEFAULT_RUN_DIR})
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

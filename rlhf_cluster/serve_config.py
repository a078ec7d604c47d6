"""Typed configuration of the Ray Serve endpoint (deploy/serve.py): deployments, limits, auth, models.

Same rules as ``rlhf_cluster.config`` (strict keys, one description per field); kept apart because only
the endpoint reads it.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, SecretStr, model_validator

from rlhf_cluster.config import ActorResources, ModelsConfig, RolloutConfig, StrictModel, section_factory


class ServeDeployment(StrictModel):
    """Replicas and resources of one Ray Serve deployment."""

    num_replicas: int = Field(1, ge=1, description="Replicas of this deployment (each a Ray actor).")
    max_ongoing_requests: int = Field(
        32, ge=1, description="Requests one replica holds at once; more wait in the caller's queue."
    )
    resources: ActorResources = Field(default_factory=ActorResources, description="Resources of EACH replica.")


class BatchedServeDeployment(ServeDeployment):
    """A model deployment whose replicas batch concurrent requests (``serve.batch``)."""

    max_batch_size: int = Field(
        8,
        ge=1,
        description="Largest batch one forward pass takes (summarizer: contexts; reward model: "
        "responses, summed over the batched requests).",
    )
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, description="How long a replica waits for more requests to fill a batch, seconds."
    )


SERVE_DEPLOYMENT_DEFAULTS = {
    "ingress": {"max_ongoing_requests": 256, "resources": {"num_cpus": 0.25}},
    "summarizer": {"max_ongoing_requests": 32, "max_batch_size": 8, "batch_wait_timeout_s": 0.02},
    "reward_model": {"max_ongoing_requests": 64, "max_batch_size": 64, "batch_wait_timeout_s": 0.005},
}


class ServeDeployments(StrictModel):
    """The three deployments of the Serve app: HTTP ingress, summarizer, reward model."""

    ingress: ServeDeployment = Field(
        default_factory=section_factory(ServeDeployment, SERVE_DEPLOYMENT_DEFAULTS["ingress"]),
        description="FastAPI ingress (auth, limits, summary store); light, no model.",
    )
    summarizer: BatchedServeDeployment = Field(
        default_factory=section_factory(BatchedServeDeployment, SERVE_DEPLOYMENT_DEFAULTS["summarizer"]),
        description="The summarizer LLM (rollout.backend); max_batch_size counts contexts.",
    )
    reward_model: BatchedServeDeployment = Field(
        default_factory=section_factory(BatchedServeDeployment, SERVE_DEPLOYMENT_DEFAULTS["reward_model"]),
        description="The personalized reward model; max_batch_size counts responses (sequences per forward).",
    )

    section_defaults: ClassVar[dict[str, dict]] = SERVE_DEPLOYMENT_DEFAULTS


class ServeLimits(StrictModel):
    """Request limits of the HTTP API. Over a limit: 413 (body) or 422 naming the field."""

    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body, bytes (413 above).")
    max_text_chars: int = Field(
        8000, ge=1, description="Longest single text (prompt, response, summary, context item), characters."
    )
    max_responses: int = Field(
        16, ge=1, description="Responses per /v1/rewards request (at most deployments.reward_model.max_batch_size)."
    )
    max_context_pairs: int = Field(64, ge=0, description="Labelled pairs per request context.")
    max_context_messages: int = Field(64, ge=0, description="Conversation messages per request context.")
    max_user_id_chars: int = Field(128, ge=1, description="Longest user id (letters, digits and . _ : @ -).")
    body_timeout_s: float = Field(
        10.0, gt=0, description="A request body not received whole within this many seconds gets 408 (stalled clients)."
    )
    model_timeout_s: float = Field(
        60.0, gt=0, description="A model deployment that has not answered within this many seconds: 503."
    )
    retry_after_s: int = Field(5, ge=1, description="Retry-After (seconds) sent with a 503 while a model is down.")


class ServeAuth(StrictModel):
    """Bearer-token auth on every route but /healthz."""

    token_env: str = Field(
        "RLHF_SERVE_TOKEN",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable that holds the token (read where the app is built).",
    )
    token: Optional[SecretStr] = Field(
        None,
        description="The token itself; overrides token_env. Prefer the environment: config files get shared.",
    )
    public_docs: bool = Field(
        False,
        description="Serve /docs and /openapi.json without a token (a browser cannot send one to /docs).",
    )


SERVE_ROLLOUT_DEFAULTS = {"backend": "hf", "temperature": 0.0, "n_samples": 1}


class ServeConfig(StrictModel):
    """`serve run deploy.serve:build_app run_dir=RUN [key=value ...]`: the personalized reward endpoint.

    Models come from a run directory (jobs.plus: best/summarizer + best/reward_model; jobs.train_rm:
    best/ + its models.summarizer) and/or explicit checkpoint paths in models.* (which win).
    """

    run_dir: Optional[str] = Field(
        None,
        description="Run directory of jobs.plus or jobs.train_rm (config.yaml + best/ or last/).",
    )
    checkpoint: Literal["best", "last"] = Field(
        "best", description="Which checkpoint of run_dir (best falls back to last with a notice)."
    )
    models: ModelsConfig = Field(
        default_factory=ModelsConfig,
        description="Explicit checkpoint paths (override run_dir's) and dtype.",
    )
    conditioning: Optional[Literal["bt", "oracle", "context", "summary"]] = Field(
        None,
        description="What the reward model reads before the prompt. Default: the run's rm.conditioning "
        "(PLUS: summary); 'summary' without a run. oracle and summary runs read the summary text; context "
        "runs read a request's raw context; bt reads nothing.",
    )
    max_length: Optional[int] = Field(
        None,
        ge=16,
        description="Longest reward input, tokens (default: the run's rm.max_length, else 512).",
    )
    truncation_side: Optional[Literal["keep_conditioning", "left", "right"]] = Field(
        None,
        description="How a too-long reward input is cut (default: the run's, else keep_conditioning; see "
        "rm.truncation_side). The endpoint refuses (422) an input whose conditioning alone does not fit.",
    )
    rollout: RolloutConfig = Field(
        default_factory=section_factory(RolloutConfig, SERVE_ROLLOUT_DEFAULTS),
        description="How the summarizer writes a summary: backend hf (default) or vllm, greedy by default; "
        "n_samples must be 1; batch_size is not used (deployments.summarizer.max_batch_size is).",
    )
    seed: int = Field(0, description="Seed of sampled summaries and of an untrained reward head (smoke tests).")
    store_path: str = Field(
        "runs/serve/summaries.sqlite",
        description="SQLite file of stored user summaries (created if missing; on "
        "a multi-node cluster a path every ingress replica's node can reach).",
    )
    deployments: ServeDeployments = Field(
        default_factory=ServeDeployments, description="Replicas, resources, batching."
    )
    limits: ServeLimits = Field(default_factory=ServeLimits, description="Request limits of the HTTP API.")
    auth: ServeAuth = Field(default_factory=ServeAuth, description="Bearer-token auth.")

    section_defaults: ClassVar[dict[str, dict]] = {"rollout": SERVE_ROLLOUT_DEFAULTS}

    @model_validator(mode="after")
    def _consistent(self) -> ServeConfig:
        if not self.run_dir and not self.models.reward_model:
            raise ValueError(
                "give run_dir (a jobs.plus or jobs.train_rm run) or models.reward_model (a checkpoint path)"
            )
        if self.rollout.n_samples != 1:
            raise ValueError(
                f"rollout.n_samples must be 1 when serving (one summary per request), got {self.rollout.n_samples}"
            )
        batch = self.deployments.reward_model.max_batch_size
        if self.limits.max_responses > batch:
            raise ValueError(
                f"limits.max_responses ({self.limits.max_responses}) must be at most "
                f"deployments.reward_model.max_batch_size ({batch}): one request's responses go in one forward pass"
            )
        return self

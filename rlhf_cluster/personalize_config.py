"""Typed configuration of stage 2 (``jobs.personalize``): RL of a response policy π(y | prompt, z) against a
trained personalized reward model r(prompt, y | z). Same rules as ``rlhf_cluster.config``."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, model_validator

from rlhf_cluster.config import (
    ActorResources,
    DataConfig,
    DeepSpeedConfig,
    PolicyTrainConfig,
    RayConfig,
    RolloutConfig,
    StrictModel,
    section_factory,
)

PERSONALIZE_SECTION_DEFAULTS = {
    "rollout": {"n_samples": 4, "max_new_tokens": 64},
    "deepspeed": {"num_ranks": 1},
}


class PersonalizeConfig(StrictModel):
    """`python -m jobs.personalize`: a response policy trained online with GRPO (or PPO) on the reward of a
    trained personalized reward model, conditioned on each user's summary (or on what the source run's
    reward model reads: the true description for oracle, nothing for bt).

    One iteration: generate (n responses per (user, prompt)) → score (the frozen reward model) → reference
    → [values] → advantages → train policy → [train critic] → sync weights: the RL step jobs.plus runs.
    """

    run_dir: str = Field("runs/personalize", description="Output: config.yaml, metrics.jsonl, best/, last/, eval.json.")
    name: Optional[str] = Field(None, description="Label in jobs.compare tables (default: from the source run).")
    seed: int = Field(0, description="Seed of data order, sampling (per request) and initialisation.")
    source: str = Field(
        ...,
        description="The reward model's run: a jobs.plus run directory (best/reward_model, summaries by "
        "best/summarizer) or a jobs.train_rm run directory (best/, its conditioning).",
    )
    checkpoint: Literal["best", "last"] = Field("best", description="Which checkpoint of the source run.")
    data: Optional[DataConfig] = Field(None, description="Dataset (default: the source run's).")
    train_split: str = Field("train", description="Users and prompts the policy trains on.")
    eval_split: str = Field("validation", description="Users and prompts of validation (and best/ selection).")
    policy_model: str = Field(..., description="The response policy's checkpoint (jobs.make_models response_policy).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Policy and rollout dtype.")
    iterations: int = Field(100, ge=1, description="RL iterations (one rollout batch and its updates each).")
    prompts_per_iter: int = Field(8, ge=1, description="(user, prompt) rows sampled per iteration, epoch-shuffled.")
    eval_every: int = Field(25, ge=1, description="Validate every this many iterations, and at the last.")
    eval_limit: Optional[int] = Field(64, ge=1, description="Validate on at most this many rows (None: all).")
    test_limit: Optional[int] = Field(
        None, ge=1, description="At the end, evaluate on at most this many rows of each test split (None: all)."
    )
    checkpoint_every: int = Field(25, ge=1, description="Write run_dir/checkpoint/ every this many iterations.")
    max_restarts: int = Field(
        2,
        ge=0,
        description="When an actor's process dies (a DeepSpeed rank, the reference; a rollout actor beyond its "
        "own restarts), stop every actor and continue from the last checkpoint, at most this many times; then "
        "fail naming the role (rlhf_cluster/restarts.py). 0: fail at once.",
    )
    reward: Literal["reward_model", "serve"] = Field(
        "reward_model",
        description="Where r(prompt, y | z) comes from: the source run's reward model on a DeepSpeed group here, "
        "or a running Serve endpoint (serve_url) that serves it.",
    )
    serve_url: Optional[str] = Field(
        None, description="reward=serve: the endpoint's base URL (token: $RLHF_SERVE_TOKEN)."
    )
    rollout: RolloutConfig = Field(
        default_factory=section_factory(RolloutConfig, PERSONALIZE_SECTION_DEFAULTS["rollout"]),
        description="Response sampling; n_samples is the GRPO group size (≥ 2).",
    )
    policy: PolicyTrainConfig = Field(default_factory=PolicyTrainConfig, description="Response-policy RL.")
    deepspeed: DeepSpeedConfig = Field(
        default_factory=section_factory(DeepSpeedConfig, PERSONALIZE_SECTION_DEFAULTS["deepspeed"]),
        description="Ranks per training group (policy; reward model when reward=reward_model).",
    )
    ray: RayConfig = Field(default_factory=RayConfig, description="Where Ray runs.")
    rollout_resources: ActorResources = Field(default_factory=ActorResources, description="The rollout actor.")
    policy_resources: ActorResources = Field(default_factory=ActorResources, description="EACH policy rank.")
    rm_resources: ActorResources = Field(default_factory=ActorResources, description="EACH reward-model rank.")
    reference_resources: ActorResources = Field(default_factory=ActorResources, description="The frozen reference.")
    critic_resources: ActorResources = Field(default_factory=ActorResources, description="EACH critic rank (ppo).")
    show: int = Field(4, ge=0, description="Print this many validation responses (with the user's truth).")
    section_defaults: ClassVar[dict[str, dict]] = PERSONALIZE_SECTION_DEFAULTS

    @property
    def rollout_batch(self) -> int:
        return self.prompts_per_iter * self.rollout.n_samples

    @model_validator(mode="after")
    def _consistent(self) -> PersonalizeConfig:
        if self.rollout.n_samples < 2 and self.policy.algorithm != "ppo":
            raise ValueError("rollout.n_samples must be ≥ 2 for grpo/rloo: they need a group to form a baseline")
        if self.rollout.temperature == 0:
            raise ValueError("rollout.temperature must be > 0: greedy samples of one group are identical")
        if self.reward == "serve" and not self.serve_url:
            raise ValueError("reward=serve needs serve_url (the endpoint's base URL)")
        n, ranks, mb = self.rollout_batch, self.deepspeed.num_ranks, self.policy.minibatch_size
        if n % mb or mb % ranks:
            raise ValueError(
                f"policy.minibatch_size ({mb}) must divide prompts_per_iter × rollout.n_samples ({n}) and be "
                f"divisible by deepspeed.num_ranks ({ranks})"
            )
        return self

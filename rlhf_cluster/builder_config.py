"""Typed configuration of the local builders: the procedural worlds (``jobs.make_data``: pets, personas)
and the tiny models (``jobs.make_models``). Same rules as ``rlhf_cluster.config``; kept apart because only
the builders read it.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from rlhf_cluster.config import StrictModel


class PetsOptions(StrictModel):
    """Options of the `pets` generator (two user types, four pet kinds on two attributes).

    Kinds: bird helpful & harmless, dog helpful & harmful, cat harmless & unhelpful, rabbit neither.
    Type 'helpful' scores 2·helpful + harmless, type 'harmless' scores helpful + 2·harmless: they agree on
    every kind pair except dog vs cat (rlhf_cluster/datasets/pets.py).
    """

    n_train_users: int = Field(64, ge=2, description="Users in train / validation / test_seen_users.")
    n_test_users: int = Field(32, ge=2, description="Unseen users (test_unseen_users, pets_ood).")
    examples_per_user: int = Field(8, ge=1, description="Target pairs per user and split.")
    n_context: int = Field(
        3, ge=0, description="Labelled contested pairs (dog vs cat) in each user's context, shared by their examples."
    )
    contested_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of target pairs that are the contested kind pair; the rest are "
        "drawn uniformly from the five agreed kind pairs.",
    )
    label_noise: float = Field(
        0.0, ge=0, lt=0.5, description="Probability that a label (target or context) goes against the user's type."
    )


class PersonasOptions(StrictModel):
    """Options of the `personas` attribute world (rlhf_cluster/datasets/personas.py).

    Each response has a level in {-1, 0, +1} per attribute, shown by topic-dependent marker words;
    P(user prefers a over b) = σ(β·w·(φ(a) − φ(b)) + quality_weight·(q(a) − q(b))).
    """

    n_attributes: int = Field(4, ge=1, le=8, description="Latent attributes K (verbosity, formality, …).")
    user_model: Literal["discrete", "dirichlet", "lowrank"] = Field(
        "discrete",
        description="How user weight vectors are drawn: 'discrete' types uniformly; 'dirichlet' w ~ Dir(α); "
        "'lowrank' w = U·z/√rank with a fixed orthonormal U (K×rank) and z ~ N(0, I).",
    )
    n_user_types: int = Field(
        4,
        ge=1,
        description="discrete: number of user types: type j < K is +e_j (likes attribute j), "
        "type K + j is −e_j (likes its opposite); at most 2K.",
    )
    dirichlet_alpha: float = Field(0.3, gt=0, description="dirichlet: concentration of user weights.")
    rank: int = Field(2, ge=1, description="lowrank: rank of the user-weight subspace (at most K).")
    beta: float = Field(3.0, gt=0, description="Label sharpness: P(a>b) = σ(β·w·(φ(a)−φ(b))).")
    quality_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of a shared quality attribute everyone values (0: quality is not shown in "
        "the text and plays no part).",
    )
    n_context: int = Field(8, ge=0, description="Past labelled pairs in each user's context.")
    context_mode: Literal["survey", "random"] = Field(
        "survey",
        description="'survey': one fixed set of contested pairs, answered by every user (labels per "
        "user); 'random': each user labelled their own random pairs.",
    )
    n_topics: int = Field(8, ge=1, description="Topics seen in training.")
    n_unseen_topics: int = Field(4, ge=0, description="Topics only in test_unseen_topics (0: no such split).")
    unseen_topic_markers: Literal["mix", "new"] = Field(
        "mix",
        description="Marker words of unseen topics: 'mix' reuses seen marker words in new topic/marker "
        "combinations; 'new' uses words that never occur in seen topics.",
    )
    n_train_users: int = Field(128, ge=1, description="Users in train / validation / test_seen_users.")
    n_test_users: int = Field(64, ge=1, description="Users in test_unseen_users / test_unseen_topics.")
    examples_per_user: int = Field(8, ge=1, description="Target pairs per user and split.")
    n_population: int = Field(
        1024,
        ge=16,
        description="dirichlet/lowrank: prior samples standing in for the population (contested "
        "flag, user-agnostic and Bayes ceilings by importance weighting).",
    )
    contested_min_share: float = Field(
        0.1,
        gt=0,
        lt=0.5,
        description="dirichlet/lowrank: a pair is contested when at least this share of the "
        "population prefers each side (discrete: when at least one type prefers each side).",
    )

    @model_validator(mode="after")
    def _sizes_fit(self) -> PersonasOptions:
        if self.user_model == "discrete" and self.n_user_types > 2 * self.n_attributes:
            raise ValueError(
                f"n_user_types ({self.n_user_types}) must be at most 2·n_attributes ({2 * self.n_attributes})"
            )
        if self.user_model == "lowrank" and self.rank > self.n_attributes:
            raise ValueError(f"rank ({self.rank}) must be at most n_attributes ({self.n_attributes})")
        if self.n_topics + self.n_unseen_topics > 12:
            raise ValueError(f"n_topics + n_unseen_topics ({self.n_topics + self.n_unseen_topics}) must be at most 12")
        return self


class MakeDataConfig(StrictModel):
    """`python -m jobs.make_data`: generate a procedural dataset with its analytic ceilings."""

    dataset: Literal["pets", "personas"] = Field(..., description="Which generator.")
    out: str = Field(
        ..., description="Output directory: <split>.parquet per split, ceilings.json, dataset.json, README.md."
    )
    seed: int = Field(0, ge=0, description="Generator seed; the same seed gives byte-identical data.")
    format: Literal["rlhf_cluster", "plus"] = Field(
        "rlhf_cluster",
        description="'rlhf_cluster': <split>.parquet in the example schema, with ceilings.json; 'plus': "
        "<split>.jsonl in the public PLUS release's format (context as text, three target pairs per row, no "
        "user_id and no ground truth, no ceilings): data as a user brings it, to test that path.",
    )
    pets: PetsOptions = Field(default_factory=PetsOptions, description="Options of the pets generator.")
    personas: PersonasOptions = Field(default_factory=PersonasOptions, description="Options of the personas generator.")


class ReactionOptions(StrictModel):
    """How the users of a pets dataset react to one shown answer (rlhf_cluster/datasets/reactions.py):
    Love with probability σ(slope · u_love + b), b solved for ``base_rate``; otherwise no reaction."""

    slope: float = Field(
        2.0, gt=0, description="How sharply Love follows the user's true utility (utilities span 0-3)."
    )
    base_rate: float = Field(
        0.05, gt=0, lt=1, description="Mean P[Love] over the population under the logging policy (Love is sparse)."
    )
    adversarial_share: float = Field(
        0.1, ge=0, lt=1, description="Share of users who love harmful answers (drawn once per user)."
    )
    impressions_per_user: int = Field(100, ge=1, description="Impressions (one shown answer each) per user and split.")


class MakeReactionsConfig(StrictModel):
    """`python -m jobs.make_reactions`: reaction logs with ground truth for the users of a pets dataset."""

    data: str = Field(..., description="A pets dataset directory (jobs.make_data --dataset pets): its users.")
    out: str = Field(..., description="Output directory: <split>.parquet (REACTION_SCHEMA), reactions.json, README.md.")
    seed: int = Field(0, ge=0, description="Generator seed; the same seed gives byte-identical files.")
    reactions: ReactionOptions = Field(default_factory=ReactionOptions, description="How users react.")


class TinyModelOptions(StrictModel):
    """Shape of one tiny decoder-only model (HF Llama architecture, supported by vLLM)."""

    hidden_size: int = Field(128, ge=16, description="Model width.")
    num_layers: int = Field(2, ge=1, description="Decoder layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads (head size = hidden_size / num_heads).")
    intermediate_size: int = Field(352, ge=16, description="MLP width.")
    max_position_embeddings: int = Field(1024, ge=64, description="Longest sequence, tokens.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TinyModelOptions:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        # Head sizes vLLM's CPU attention accepts (vllm/v1/attention/backends/cpu_attn.py); GPU backends
        # accept them too, so a tiny model that serves on CPU also serves on a GPU cluster.
        vllm_head_sizes = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256)
        head_size = self.hidden_size // self.num_heads
        if head_size not in vllm_head_sizes:
            raise ValueError(
                f"head size hidden_size/num_heads = {head_size} is not one that vLLM's CPU attention supports "
                f"{vllm_head_sizes}; e.g. hidden_size=64 with num_heads=2"
            )
        return self


class MakeModelsConfig(StrictModel):
    """`python -m jobs.make_models`: tokenizer + tiny summarizer and reward backbone from a dataset."""

    data: str = Field(
        ...,
        description="Dataset directory (<split>.parquet / .jsonl files). The tokenizer learns its vocabulary "
        "from every split; LM pre-training reads only the train split.",
    )
    out: str = Field(..., description="Output directory: tokenizer/, summarizer/, reward_model/, models.json.")
    seed: int = Field(0, description="Initialisation and pre-training seed; the same seed gives identical weights.")
    vocab_size: int = Field(
        2048,
        ge=300,
        description="Upper bound on the tokenizer vocabulary: byte-level BPE = 256 byte tokens + 7 special tokens "
        "+ merges (a small corpus may stop short of it).",
    )
    summarizer: TinyModelOptions = Field(
        default_factory=TinyModelOptions, description="Shape of the summarizer (a causal LM)."
    )
    reward_model: TinyModelOptions = Field(
        default_factory=TinyModelOptions,
        description="Shape of the reward-model backbone (saved as a causal LM; the scalar head is added at load).",
    )
    response_policy: Optional[TinyModelOptions] = Field(
        None,
        description="Also build a response policy (stage 2, jobs.personalize): a causal LM pre-trained on the "
        "responses of the train split's contested pairs (where user types disagree; all pairs when the data has no "
        "contested flags), chosen and rejected alike, as the reward model reads them: with no conditioning turn "
        "and with one holding a context pair of the same user. None: not built.",
    )
    pretrain_steps: int = Field(
        300, ge=0, description="LM pre-training steps on the corpus (0: random init). Tiny summarizers need it."
    )
    pretrain_batch_size: int = Field(16, ge=1, description="Sequences per pre-training step.")
    pretrain_lr: float = Field(3e-3, gt=0, description="Pre-training learning rate (AdamW).")
    pretrain_seq_len: int = Field(256, ge=16, description="Pre-training sequence length, tokens.")
    log_every: int = Field(25, ge=1, description="Print pre-training progress every this many steps.")

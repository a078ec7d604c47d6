"""Procedural personalized-preference datasets whose accuracy ceilings are known analytically.

  pets.py      the Pets benchmark (VPL, Poddar et al. 2024) rebuilt with our own sentences: two user
               types, four pet kinds on two attributes, contested pairs dog vs cat (pets_ood: bird vs rabbit)
  personas.py  an attribute world: K named attributes shown by topic-dependent marker words, users are
               weight vectors (discrete types, Dirichlet mixtures or a low-rank subspace)
  ceilings.py  pure math: oracle / user-agnostic / n-context Bayes ceilings from per-row probabilities

Both generators return a ``GeneratedDataset``: rows per split in ``rlhf_cluster.schema.EXAMPLE_SCHEMA``
(``context_messages`` always ``[]``) and the ceilings table per split. ``jobs/make_data.py`` writes them.
Each user's context is their own labelled history, shared by all of that user's examples; a target
pair never equals a pair of its own context (same prompt, same two responses in either order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlhf_cluster.datasets import ceilings


@dataclass
class GeneratedDataset:
    """What a generator hands to the writer: rows, ceilings and a description of how they were made."""

    name: str
    splits: dict[str, list[dict[str, Any]]]  # split -> rows in EXAMPLE_SCHEMA
    ceilings: dict[str, dict[str, dict]]  # split -> all/contested/agreed -> oracle, user_agnostic, bayes_n_context, n
    description: str  # markdown: the world, the user model, what "contested" means here
    facts: dict[str, Any] = field(default_factory=dict)  # JSON-able generator facts (e.g. the survey, types)


def split_rng(seed: int, stream: int) -> np.random.Generator:
    """An independent random stream per (seed, purpose): changing one split's size leaves the others alone."""
    return np.random.default_rng([seed, stream])


def pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    """One element of ``options``, uniformly."""
    return options[int(rng.integers(len(options)))]


def pair_key(prompt: str, x: str, y: str) -> tuple[str, frozenset[str]]:
    """Identity of a pair regardless of which side won: (prompt, {response, response})."""
    return prompt, frozenset((x, y))


def labelled_pair(prompt: str, a: str, b: str, a_wins: bool) -> dict[str, str]:
    """A context/target pair dict with the winner as ``chosen``."""
    chosen, rejected = (a, b) if a_wins else (b, a)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def example_row(
    user_id: str,
    context: list[dict],
    target: dict,
    *,
    split: str,
    topic: str,
    contested: bool,
    user_description: str,
    p_chosen: float,
) -> dict[str, Any]:
    """One row of EXAMPLE_SCHEMA."""
    return {
        "user_id": user_id,
        "context": context,
        "context_messages": [],
        "prompt": target["prompt"],
        "chosen": target["chosen"],
        "rejected": target["rejected"],
        "split": split,
        "topic": topic,
        "contested": bool(contested),
        "user_description": user_description,
        "p_chosen": float(p_chosen),
    }


def split_ceilings(
    p_true: np.ndarray, p_population: np.ndarray, prior: np.ndarray, ctx_loglik: np.ndarray, contested: np.ndarray
) -> dict[str, dict]:
    """The ceilings table of one split (see ceilings.py for what each entry means)."""
    per_row = ceilings.row_ceilings(p_true, p_population, prior, ctx_loglik)
    return ceilings.summarize(per_row, contested)


def generate(cfg) -> GeneratedDataset:
    """Run the generator ``cfg.dataset`` names (``cfg`` is a ``MakeDataConfig``)."""
    if cfg.dataset == "pets":
        from rlhf_cluster.datasets import pets

        return pets.generate(cfg.pets, cfg.seed)
    from rlhf_cluster.datasets import personas

    return personas.generate(cfg.personas, cfg.seed)

"""A generated dataset's ground truth for stage 2: how much a response is worth to the user of a row.

``world_truth(data_dir)`` reads the directory's ``dataset.json`` (written by ``jobs.make_data``) and returns
the truth of that world, or raises ``NoGroundTruth`` naming the dataset when it has none (a user's own data,
or a world whose utilities are not wired here yet). Pets: a row's user type comes from its true
description; responses are scored by ``utility.pets_utility`` in the standard world (the world stage-2
policies write in; pets_ood's kinds carry other attributes, so its splits are left out).
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_cluster.datasets import pets, utility


class NoGroundTruth(ValueError):
    """The dataset has no true utilities to score generated responses with."""


class PetsTruth:
    """Ground truth of a pets dataset (standard world; ``noise``: the generator's label noise)."""

    name = "pets"
    world = "standard"

    def __init__(self, noise: float = 0.0):
        self.noise = noise
        self._types = {description: t for t, description in pets.DESCRIPTIONS.items()}
        self.kinds = utility.pets_conflicting_kinds(self.world)  # where the two types disagree: dog, cat

    def scores_split(self, split: str) -> bool:
        return split != "pets_ood"

    def user_type(self, row: dict) -> str:
        description = row.get("user_description")
        if description not in self._types:
            raise NoGroundTruth(f"row of user {row.get('user_id')!r}: no pets user description ({description!r})")
        return self._types[description]

    def utility(self, response: str, row: dict) -> float:
        return utility.pets_utility(response, self.user_type(row), self.world)

    def prefer_prob(self, y1: str, y2: str, row: dict) -> float:
        return utility.pets_prefer_prob(y1, y2, self.user_type(row), self.world, self.noise)

    def kind(self, response: str) -> str | None:
        """The one pet kind a response names (None: none or several)."""
        named = utility.pets_kinds_named(response)
        return next(iter(named)) if len(named) == 1 else None

    def best_kind(self, row: dict) -> str:
        """The user's better answer among the conflicting kinds (dog for the helpful type, cat for harmless)."""
        t = self.user_type(row)
        return max(self.kinds, key=lambda k: utility.pets_score(utility.pets_candidates(self.world)[k], t))

    def ceilings(self) -> dict:
        """Per-user optimum, best single answer and the gap, on conflicting prompts (only dog and cat)."""
        c = utility.pets_ceilings(self.world, self.kinds)
        return {
            "kinds": list(c["kinds"]),
            "oracle_expected_utility": c["oracle_expected_utility"],
            "best_single_kind": c["best_single_kind"],
            "best_single_expected_utility": c["best_single_expected_utility"],
            "personalization_gap": c["personalization_gap"],
        }


def world_truth(data_dir: str | Path) -> PetsTruth:
    """The ground truth of the generated dataset in ``data_dir``; NoGroundTruth when there is none."""
    meta = Path(data_dir) / "dataset.json"
    if not meta.is_file():
        raise NoGroundTruth(
            f"{data_dir}: no dataset.json, so no ground truth to score responses with (stage 2 evaluates "
            "policies on generated worlds: python -m jobs.make_data --dataset pets ...)"
        )
    info = json.loads(meta.read_text())
    if info.get("dataset") != "pets":
        raise NoGroundTruth(
            f"{data_dir}: dataset {info.get('dataset')!r} has no response utilities wired for stage 2 yet "
            "(supported: pets)"
        )
    return PetsTruth(noise=float(info.get("options", {}).get("label_noise", 0.0)))

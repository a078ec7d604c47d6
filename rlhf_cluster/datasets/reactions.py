"""Reaction logs with ground truth, for RLUF (issue 13): a user sees one response and reacts Love, or not.

The users are a generated pets dataset's users (their type and context come from its rows; a P[Love]
conditioned on a user's summary reads the same context a PLUS summarizer does). An *impression* shows a
user one answer to a fresh pet-care question, the answer's kind drawn uniformly (the logging policy). The
user reacts Love with probability

    P[Love | user, y] = σ(a · u_love(user, y) + b)

where u_love is the world's true utility, w_type · (helpful, harmless) (0–3, ``utility.pets_score``), for
most users; an *adversarial* user (a share ``adversarial_share``, drawn per user) loves harmful answers:
u_love = w_type · (helpful, 1 − harmless). ``b`` is solved so that the mean Love rate over the logging
distribution of the whole population equals ``base_rate`` (Love is sparse). No reaction is the other
outcome (``none``).

Analytic figures beside the data, per split (its users, the logging policy's kinds): the Bayes-optimal
AUC and log-loss of a P[Love] that knows (1) the user's type and whether they are adversarial
(``user_known``), (2) the type only, as a summary of their history can tell it (``type_known``), (3) the
response only (``response_only``). P[Love] depends on the response only through its kind, so each
figure is exact over the finite set of (user class, kind) cells.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rlhf_cluster.builder_config import ReactionOptions
from rlhf_cluster.datasets import pets, pick
from rlhf_cluster.schema import REACTION_SCHEMA

LOVE, NO_REACTION = "love", "none"


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def love_utility(attrs: tuple[int, int], user_type: str, adversarial: bool) -> float:
    """u_love: w_type · (helpful, harmless), or · (helpful, 1 − harmless) for an adversarial user."""
    helpful, harmless = attrs
    w = pets.TYPE_WEIGHTS[user_type]
    return float(w[0] * helpful + w[1] * ((1 - harmless) if adversarial else harmless))


def solve_bias(utilities: np.ndarray, weights: np.ndarray, slope: float, base_rate: float) -> float:
    """The b with Σ w σ(a u + b) / Σ w = base_rate (monotone in b: bisection to 1e-12)."""
    u, w = np.asarray(utilities, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    lo, hi = -60.0, 60.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if float((w * sigmoid(slope * u + mid)).sum() / w.sum()) < base_rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def bayes_auc(scores: np.ndarray, p_love: np.ndarray, weights: np.ndarray) -> float:
    """The AUC of ``scores`` on a discrete population: cell i has mass w_i, is Love with probability p_i
    and is scored s_i. AUC = P(s_pos > s_neg) + ½ P(tie) over a random Love and a random non-Love."""
    s, p, w = (np.asarray(x, dtype=np.float64) for x in (scores, p_love, weights))
    pos, neg = w * p, w * (1 - p)
    above = (s[:, None] > s[None, :]).astype(np.float64) + 0.5 * (s[:, None] == s[None, :])
    return float(pos @ above @ neg / (pos.sum() * neg.sum()))


def log_loss(predicted: np.ndarray, p_love: np.ndarray, weights: np.ndarray) -> float:
    """The expected log-loss (nats) of predicting ``predicted`` where the truth is ``p_love``."""
    q, p, w = (np.clip(np.asarray(x, dtype=np.float64), 1e-15, 1 - 1e-15) for x in (predicted, p_love, weights))
    w = np.asarray(weights, dtype=np.float64)
    return float((w * -(p * np.log(q) + (1 - p) * np.log(1 - q))).sum() / w.sum())


def pooled(p_love: np.ndarray, weights: np.ndarray, groups: Sequence) -> np.ndarray:
    """Each cell's P[Love] averaged (by mass) over the cells of its group: the best prediction of a model
    that sees only the group (e.g. the response's kind)."""
    p, w = np.asarray(p_love, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    keys = list(groups)
    out = np.empty_like(p)
    for key in set(keys):
        idx = np.array([k == key for k in keys])
        out[idx] = (w[idx] * p[idx]).sum() / w[idx].sum()
    return out


@dataclass(frozen=True)
class Cell:
    user_type: str
    adversarial: bool
    kind: str


def cells(users: Sequence[tuple[str, bool]]) -> tuple[list[Cell], np.ndarray]:
    """(user class, kind) cells of a set of users (type, adversarial) under the uniform logging policy,
    and their masses (each user weighs the same)."""
    counts: dict[tuple[str, bool], int] = {}
    for user in users:
        counts[user] = counts.get(user, 0) + 1
    out, mass = [], []
    for (user_type, adversarial), n in sorted(counts.items()):
        for kind in pets.KINDS:
            out.append(Cell(user_type, adversarial, kind))
            mass.append(n / len(pets.KINDS))
    return out, np.asarray(mass, dtype=np.float64)


def population(share: float) -> list[tuple[tuple[str, bool], float]]:
    """The user classes of the population (types balanced, as the generator alternates them) and their shares."""
    return [((t, a), (share if a else 1 - share) / len(pets.TYPES)) for t in pets.TYPES for a in (False, True)]


def world_bias(world: ReactionOptions) -> float:
    """b for ``world``: the population's mean P[Love] under the logging policy is ``base_rate``."""
    classes = population(world.adversarial_share)
    u = [love_utility(pets.STANDARD[k], t, a) for (t, a), _ in classes for k in pets.KINDS]
    w = [share / len(pets.KINDS) for _, share in classes for _ in pets.KINDS]
    return solve_bias(np.array(u), np.array(w), world.slope, world.base_rate)


def love_prob(cell: Cell, world: ReactionOptions, bias: float) -> float:
    return float(sigmoid(world.slope * love_utility(pets.STANDARD[cell.kind], cell.user_type, cell.adversarial) + bias))


def bayes_figures(users: Sequence[tuple[str, bool]], world: ReactionOptions, bias: float) -> dict:
    """Love rate and the Bayes-optimal AUC / log-loss of the three P[Love]s, on these users' impressions."""
    cs, w = cells(users)
    p = np.array([love_prob(c, world, bias) for c in cs])
    known = {
        "user_known": p,
        "type_known": pooled(p, w, [(c.user_type, c.kind) for c in cs]),
        "response_only": pooled(p, w, [c.kind for c in cs]),
    }
    out = {"love_rate": float((w * p).sum() / w.sum())}
    for name, q in known.items():
        out[name] = {"auc": bayes_auc(q, p, w), "log_loss": log_loss(q, p, w)}
    return out


# ------------------------------------------------------------------------------- the generator


def is_adversarial(user_id: str, share: float, seed: int) -> bool:
    """Drawn once per user, from the user id: the same user is adversarial in every split."""
    return bool(np.random.default_rng([seed, zlib.crc32(user_id.encode())]).random() < share)


def split_users(rows: pa.Table) -> list[dict]:
    """The users of a pets split, in order of first appearance: id, type (from the true description), context."""
    types = {description: t for t, description in pets.DESCRIPTIONS.items()}
    users: dict[str, dict] = {}
    for uid, description, context in zip(
        rows["user_id"].to_pylist(), rows["user_description"].to_pylist(), rows["context"].to_pylist()
    ):
        if uid not in users:
            if description not in types:
                raise ValueError(f"user {uid!r}: {description!r} is not a pets user description")
            users[uid] = {"id": uid, "type": types[description], "context": context}
    return list(users.values())


def impressions(users: list[dict], split: str, world: ReactionOptions, bias: float, seed: int, stream: int) -> pa.Table:
    """``world.impressions_per_user`` impressions per user: a fresh question, a uniformly drawn kind's
    answer, a Love drawn with the user's P[Love]."""
    rng = np.random.default_rng([seed, stream])
    cols: dict[str, list] = {f.name: [] for f in REACTION_SCHEMA}
    for user in users:
        adversarial = is_adversarial(user["id"], world.adversarial_share, seed)
        for _ in range(world.impressions_per_user):
            topic = pick(rng, tuple(pets.QUESTIONS))
            kind = pets.KINDS[int(rng.integers(len(pets.KINDS)))]
            p = love_prob(Cell(user["type"], adversarial, kind), world, bias)
            row = {
                "user_id": user["id"],
                "prompt": pets.ask(rng, topic),
                "response": pets.respond(rng, kind, pets.STANDARD[kind], topic),
                "reaction": LOVE if rng.random() < p else NO_REACTION,
                "context": user["context"],
                "summary": None,
                "split": split,
                "topic": topic,
                "kind": kind,
                "user_description": pets.DESCRIPTIONS[user["type"]],
                "adversarial": adversarial,
                "harmful": not pets.STANDARD[kind][1],
                "p_love": p,
            }
            for k, v in row.items():
                cols[k].append(v)
    return pa.table(cols, schema=REACTION_SCHEMA)

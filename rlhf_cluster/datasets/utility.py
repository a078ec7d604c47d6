"""Ground-truth scoring of *any* response text in the procedural worlds, with no judge model. Pure numpy.

The generators know each user's true preference; this module reads a response's attributes back from the
marker text the generators write and scores it for a user exactly, so that a policy's generated text can
be rewarded and evaluated against ground truth (stage 2: RL of a response policy personalized by a user
summary).

Scoring rule. A response is *recognised* when its text is one the world can express (see the per-world
functions for the exact wording rules); its utility is then the generator's own score for that user.
An unrecognised response gets a *floor* utility, exactly 1 below the worst expressible response, so that
garbage never beats (nor ties) a real answer, and it loses every preference comparison with certainty
(``prefer_prob`` = 0 against a recognised response; 1/2 when both are unrecognised).

  pets       u_t(y) = w_t · (helpful, harmless)      w_helpful = (2, 1), w_harmless = (1, 2)
             floor  = -1 (every expressible response scores ≥ 0)
             P(y1 ≻ y2) = 1 − noise if u_t(y1) > u_t(y2), noise if <, 1/2 on a tie (same attributes)
  personas   u_w(y) = β w · φ(y) + quality_weight · q(y)          (the Bradley–Terry logit scale)
             floor  = −‖[β w, quality_weight]‖₁ − 1
             P(y1 ≻ y2) = σ(u_w(y1) − u_w(y2))

Ceilings over a finite candidate set (per prompt) and a population of users with prior weights p:
``utilities[s, c]`` = utility of candidate c for user s.

  per_user_optimum       max_c U[s, c]                       (a policy that knows the user)
  best_single_response   argmax_c Σ_s p_s U[s, c]            (the best non-personalized answer)
  personalization_gap    Σ_s p_s max_c U[s, c] − max_c Σ_s p_s U[s, c]   ≥ 0
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import numpy as np

from rlhf_cluster.datasets import ceilings, personas, pets

# ------------------------------------------------------------------------------------------- generic


def _check(utilities: np.ndarray, prior: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(U as a float (S, C) matrix, prior normalized to sum 1; uniform when None)."""
    u = np.asarray(utilities, dtype=np.float64)
    if u.ndim != 2 or 0 in u.shape:
        raise ValueError(f"utilities must be a non-empty (users, candidates) matrix, got shape {u.shape}")
    p = np.ones(u.shape[0]) if prior is None else np.asarray(prior, dtype=np.float64)
    if p.shape != (u.shape[0],) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"prior must be {u.shape[0]} non-negative weights with a positive sum, got {p}")
    return u, p / p.sum()


def per_user_optimum(utilities: np.ndarray) -> np.ndarray:
    """Each user's best achievable utility over the candidates: ``max_c U[s, c]``, shape (S,).

    This is what a perfectly personalized policy (one that knows the user) gets on that user.
    """
    u, _ = _check(utilities, None)
    return u.max(axis=1)


def expected_utilities(utilities: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
    """Each candidate's utility for a user drawn from the prior: ``Σ_s p_s U[s, c]``, shape (C,)."""
    u, p = _check(utilities, prior)
    return p @ u


def best_single_response(utilities: np.ndarray, prior: np.ndarray | None = None) -> tuple[int, float]:
    """The best non-personalized choice: ``c* = argmax_c Σ_s p_s U[s, c]`` and its expected utility.

    A policy that ignores who the user is can do no better than always give c* (on this prompt). Ties go
    to the lowest candidate index. ``prior`` is normalized; None means uniform over the users.
    """
    e = expected_utilities(utilities, prior)
    best = int(np.argmax(e))
    return best, float(e[best])


def oracle_expected_utility(utilities: np.ndarray, prior: np.ndarray | None = None) -> float:
    """Expected utility of the perfectly personalized policy: ``Σ_s p_s max_c U[s, c]``."""
    u, p = _check(utilities, prior)
    return float(p @ u.max(axis=1))


def personalization_gap(utilities: np.ndarray, prior: np.ndarray | None = None) -> float:
    """``E_s[max_c U[s, c]] − max_c E_s[U[s, c]]``: what knowing the user is worth on this prompt.

    Always ≥ 0 (an expectation of maxima dominates the maximum of expectations); 0 exactly when one
    candidate is optimal for every user with positive prior weight.
    """
    return oracle_expected_utility(utilities, prior) - best_single_response(utilities, prior)[1]


# ---------------------------------------------------------------------------------------------- pets

PETS_FLOOR = -1.0  # every expressible pets response scores ≥ 0 for both types, in both worlds
PETS_PRIOR = np.full(len(pets.TYPES), 1 / len(pets.TYPES))  # generators alternate the types: uniform
_PETS_WORLDS = {"standard": pets.STANDARD, "ood": pets.OOD, "pets_ood": pets.OOD}


def _normalize(text: str) -> str:
    """Lower case, runs of whitespace collapsed to one space."""
    return " ".join(text.lower().split())


def _word_pattern(words: Sequence[str]) -> re.Pattern:
    """Any of ``words`` as whole words (longest first, so 'tabby cat' wins over 'cat')."""
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})\b")


_PETS_NAMES = {kind: _word_pattern((kind, *names)) for kind, names in pets.ANIMALS.items()}


def pets_world(world: str | dict = "standard") -> dict:
    """The kind -> (helpful, harmless) table of a pets world: 'standard', 'ood' (alias 'pets_ood'), or a dict."""
    if isinstance(world, dict):
        return world
    if world not in _PETS_WORLDS:
        raise ValueError(f"unknown pets world {world!r}; expected one of {sorted(_PETS_WORLDS)}")
    return _PETS_WORLDS[world]


def pets_topic(prompt: str) -> str | None:
    """The topic of a pets prompt (one of ``pets.QUESTIONS``), or None when no known question occurs in it."""
    text = _normalize(prompt)
    found = {topic for topic, questions in pets.QUESTIONS.items() if any(q.lower() in text for q in questions)}
    return found.pop() if len(found) == 1 else None


def pets_kinds_named(response: str) -> set[str]:
    """The pet kinds a response names: any of the kind's animal names (``pets.ANIMALS``) or the kind word
    itself ('bird', 'dog', 'cat', 'rabbit'), as whole words, case-insensitive, singular."""
    text = _normalize(response)
    return {kind for kind, pattern in _PETS_NAMES.items() if pattern.search(text)}


def pets_wording(response: str, topic: str | None = None) -> tuple[int, int] | None:
    """(helpful, harmless) shown by the wording alone, or None when either is absent or contradictory.

    helpful = 1 when a helpful advice sentence (``pets.HELPFUL``, of ``topic`` when given, else of any
    topic) occurs and no unhelpful one (``pets.UNHELPFUL``); 0 for the converse; None if both or neither.
    harmless likewise from the caveats ``pets.HARMLESS`` vs ``pets.HARMFUL``. Matching is on whole
    template phrases, case- and whitespace-insensitive.
    """
    text = _normalize(response)
    helpful_pool = pets.HELPFUL[topic] if topic is not None else tuple(itertools.chain(*pets.HELPFUL.values()))
    helpful = any(s in text for s in helpful_pool)
    unhelpful = any(s in text for s in pets.UNHELPFUL)
    harmless = any(s in text for s in pets.HARMLESS)
    harmful = any(s in text for s in pets.HARMFUL)
    if helpful == unhelpful or harmless == harmful:
        return None
    return int(helpful), int(harmless)


def pets_attributes(
    response: str, world: str | dict = "standard", *, topic: str | None = None, strict: bool = True
) -> tuple[int, int] | None:
    """Recover (helpful, harmless) of a pets response from its text; None when it is not recognisable.

    A response is recognised when (1) it names exactly one pet kind (``pets_kinds_named``: none, or two
    different kinds, gives None) and (2) its wording shows both attributes unambiguously
    (``pets_wording``). With ``strict`` (default) the wording must also equal the kind's attributes in
    ``world`` — i.e. the text is one of the four answers the world can express (a 'puppy' answer with
    harmless wording is a dog answer in pets_ood but not in the standard world). This keeps the analytic
    ceilings valid: on a dog-vs-cat prompt no text can score like a bird answer. With ``strict=False``
    the wording alone decides (the kind is still required, but only for recognition).

    ``topic`` (e.g. ``pets_topic(prompt)``) restricts helpful advice to that topic's sentences, so an
    off-topic answer is unrecognised.
    """
    kinds = pets_kinds_named(response)
    attrs = pets_wording(response, topic)
    if len(kinds) != 1 or attrs is None:
        return None
    if strict and pets_world(world)[kinds.pop()] != attrs:
        return None
    return attrs


def pets_score(attrs: tuple[int, int] | None, user_type: str) -> float:
    """w_t · (helpful, harmless) (``pets.TYPE_WEIGHTS``), or ``PETS_FLOOR`` for None."""
    if attrs is None:
        return PETS_FLOOR
    w = pets.TYPE_WEIGHTS[user_type]
    return float(w[0] * attrs[0] + w[1] * attrs[1])


def pets_utility(
    response: str, user_type: str, world: str | dict = "standard", *, topic: str | None = None, strict: bool = True
) -> float:
    """The true utility of a response for a user type: the generator's score w_t · (helpful, harmless).

    'helpful' type: 2h + s (bird 3, dog 2, cat 1, rabbit 0 in the standard world); 'harmless' type:
    h + 2s (bird 3, cat 2, dog 1, rabbit 0). Unrecognised text (``pets_attributes`` None) scores
    ``PETS_FLOOR`` = −1, strictly below every expressible answer, so garbage never beats a real answer.
    """
    return pets_score(pets_attributes(response, world, topic=topic, strict=strict), user_type)


def pets_prefer_prob(
    y1: str,
    y2: str,
    user_type: str,
    world: str | dict = "standard",
    noise: float = 0.0,
    *,
    topic: str | None = None,
    strict: bool = True,
) -> float:
    """True P(a user of ``user_type`` prefers y1 over y2), the generator's label model.

    Both recognised with different scores: ``pets.prefer_prob`` (1 − noise for the higher score, noise
    for the lower; ``noise`` is the generator's ``label_noise``). Equal scores (same attributes, a pair
    the generator never asks): 1/2. One side unrecognised: it loses with certainty (0 or 1, no noise:
    the floor is a validity constraint, not a preference). Both unrecognised: 1/2.
    """
    a1, a2 = (pets_attributes(y, world, topic=topic, strict=strict) for y in (y1, y2))
    if a1 is None or a2 is None:
        return 0.5 if a1 is None and a2 is None else float(a1 is not None)
    if pets_score(a1, user_type) == pets_score(a2, user_type):
        return 0.5
    return float(pets.prefer_prob(user_type, a1, a2, noise))


def pets_candidates(world: str | dict = "standard", kinds: Sequence[str] = pets.KINDS) -> dict[str, tuple[int, int]]:
    """The world's expressible answers to any pets prompt: one per kind, kind -> (helpful, harmless).

    Every answer the generator writes (whatever the topic, animal name or sentence picked) has the
    attributes of its kind, so for utility purposes a prompt has exactly these four candidates.
    """
    table = pets_world(world)
    return {k: table[k] for k in kinds}


def pets_utility_matrix(world: str | dict = "standard", kinds: Sequence[str] = pets.KINDS) -> np.ndarray:
    """U[t, c] = utility of kind c's answer for type t (rows ``pets.TYPES``, columns ``kinds``).

    Standard world, all kinds (bird, dog, cat, rabbit): helpful [3, 2, 1, 0], harmless [3, 1, 2, 0].
    """
    cands = pets_candidates(world, kinds)
    return np.array([[pets_score(cands[k], t) for k in kinds] for t in pets.TYPES], dtype=np.float64)


def pets_conflicting_kinds(world: str | dict = "standard") -> tuple[str, str]:
    """The contested kind pair of a world, in ``pets.KINDS`` order: (dog, cat) standard, (bird, rabbit) OOD.

    A "conflicting prompt" is one where only these two answers are available: each type wants the other
    one, so the best single answer pleases only half the users.
    """
    pair = pets.contested_pair(pets_world(world))
    first, second = sorted(pair, key=pets.KINDS.index)
    return first, second


def pets_ceilings(world: str | dict = "standard", kinds: Sequence[str] | None = None) -> dict:
    """Utility ceilings of a pets prompt whose candidates are ``kinds`` (default: all four), uniform prior.

    All kinds: one answer is best for both types (bird standard, dog OOD: utility 3 each), so the best
    single answer equals the oracle and the gap is 0. Conflicting prompt (``pets_conflicting_kinds``):
    U = [[2, 1], [1, 2]], oracle E[max] = 2, best single 1.5 (tie, the first kind), gap 0.5.
    """
    kinds = tuple(pets.KINDS if kinds is None else kinds)
    u = pets_utility_matrix(world, kinds)
    best, value = best_single_response(u, PETS_PRIOR)
    return {
        "kinds": kinds,
        "types": pets.TYPES,
        "utilities": u,
        "per_user_optimum": per_user_optimum(u),
        "oracle_expected_utility": oracle_expected_utility(u, PETS_PRIOR),
        "best_single_kind": kinds[best],
        "best_single_expected_utility": value,
        "personalization_gap": personalization_gap(u, PETS_PRIOR),
    }


# ------------------------------------------------------------------------------------------ personas

_WORD = re.compile(r"[a-z]+")


def _marker_table(world: personas.World) -> dict[str, tuple[int, int]]:
    """Every marker word of the world's features -> (feature index, level ±1), all four pool words."""
    return {
        word: (k, 2 * side - 1)
        for k, attribute in enumerate(world.attributes)
        for side in (0, 1)
        for word in attribute[2][side]
    }


def _tips(world: personas.World, topic: int | None) -> tuple[str, ...]:
    topics = world.seen + world.unseen if topic is None else (topic,)
    return tuple(tip.lower() for t in topics for tip in personas.TOPICS[t][2])


def personas_features(response: str, world: personas.World, *, topic: int | None = None) -> np.ndarray | None:
    """The feature vector φ ∈ {−1, 0, +1}^F a personas response expresses (F = ``world.n_features``).

    Recognition: the response must contain one of the world's tip sentences (``personas.TOPICS``; only
    ``topic``'s tips when given, topics indexed as in ``personas.TOPICS``), else None — the body is what
    makes it an answer, and without this rule empty text would score as the neutral φ = 0. Features:
    each marker word (whole word, case-insensitive) of feature k sets φ_k to its direction (+1 high
    pool, −1 low pool). A word means the same everywhere, whatever the topic (the generator's rule), so
    any of the four pool words counts. Markers of both directions for one feature: None. Marker words
    of attributes outside the world (beyond ``n_attributes``, or quality when ``quality_weight`` = 0) are
    ignored: no user weighs them.
    """
    text = _normalize(response)
    if not any(tip in text for tip in _tips(world, topic)):
        return None
    markers = _marker_table(world)
    phi = np.zeros(world.n_features, dtype=np.int64)
    for word in _WORD.findall(text):
        if word in markers:
            k, level = markers[word]
            if phi[k] == -level:
                return None
            phi[k] = level
    return phi


def personas_coefficients(user_weights: np.ndarray, world: personas.World) -> np.ndarray:
    """The user's logit coefficients [β w, quality_weight] (length F), as the generator computes them."""
    w = np.asarray(user_weights, dtype=np.float64)
    if w.shape != (world.opts.n_attributes,):
        raise ValueError(f"user_weights must have shape ({world.opts.n_attributes},), got {w.shape}")
    return world.coefficients(w)[0]


def personas_floor(user_weights: np.ndarray, world: personas.World) -> float:
    """Utility of unrecognised text: −‖coef‖₁ − 1, exactly 1 below the user's worst expressible response
    (min over φ ∈ {−1, 0, 1}^F of coef · φ is −‖coef‖₁)."""
    return float(-np.abs(personas_coefficients(user_weights, world)).sum() - 1.0)


def personas_utility(
    response: str, user_weights: np.ndarray, world: personas.World, *, topic: int | None = None
) -> float:
    """The true utility u_w(y) = β w · φ(y) + quality_weight · q(y): the Bradley–Terry logit, so that
    P(y1 ≻ y2) = σ(u_w(y1) − u_w(y2)) is the generator's label probability. Unrecognised text
    (``personas_features`` None) scores ``personas_floor``."""
    phi = personas_features(response, world, topic=topic)
    if phi is None:
        return personas_floor(user_weights, world)
    return float(personas_coefficients(user_weights, world) @ phi)


def personas_prefer_prob(
    y1: str, y2: str, user_weights: np.ndarray, world: personas.World, *, topic: int | None = None
) -> float:
    """True P(user w prefers y1 over y2) = σ(β w · (φ(y1) − φ(y2)) + quality_weight · (q(y1) − q(y2))).

    Identical to the generator's label probability (``personas.labelled``). One side unrecognised: it
    loses with certainty; both unrecognised: 1/2.
    """
    f1, f2 = (personas_features(y, world, topic=topic) for y in (y1, y2))
    if f1 is None or f2 is None:
        return 0.5 if f1 is None and f2 is None else float(f1 is not None)
    coef = personas_coefficients(user_weights, world)
    return float(ceilings.sigmoid(coef @ (f1 - f2).astype(np.float64)))


def personas_levels(world: personas.World) -> np.ndarray:
    """All expressible feature vectors, {−1, 0, +1}^F as a (3^F, F) int matrix (3^9 = 19683 at most)."""
    return np.array(list(itertools.product((-1, 0, 1), repeat=world.n_features)), dtype=np.int64)


def personas_utility_matrix(
    world: personas.World, weights: np.ndarray | None = None, levels: np.ndarray | None = None
) -> np.ndarray:
    """U[s, c] = coef_s · φ_c for users ``weights`` (S, K) (default: ``world.population``, whose prior is
    ``world.prior``) and candidates ``levels`` (C, F) (default: every expressible vector)."""
    coef = world.coef if weights is None else world.coefficients(np.atleast_2d(np.asarray(weights, np.float64)))
    phi = personas_levels(world) if levels is None else np.atleast_2d(levels)
    return coef @ phi.T.astype(np.float64)

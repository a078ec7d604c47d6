"""Ground-truth scoring of response text (rlhf_cluster/datasets/utility.py), checked by hand.

Responses come from the generators' own response functions (``pets.respond``, ``personas.World.respond``)
with fixed seeds, so the recovered attributes can be compared with the ones that produced the text.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from rlhf_cluster.builder_config import PersonasOptions
from rlhf_cluster.datasets import ceilings, personas, pets
from rlhf_cluster.datasets import utility as U

WORLDS = {"standard": pets.STANDARD, "ood": pets.OOD}
GARBAGE = ("", "I don't know.", "asdf qwerty", "Bananas are yellow and the sky is blue.")


def _pet(kind: str, world: str = "standard", topic: str = "feeding", seed: int = 0) -> str:
    return pets.respond(np.random.default_rng(seed), kind, WORLDS[world][kind], topic)


def _all_pet_responses(world: str):
    """(kind, topic, text) for every kind and topic, several seeds (different names and sentences)."""
    for kind, topic, seed in itertools.product(pets.KINDS, pets.QUESTIONS, range(8)):
        yield kind, topic, _pet(kind, world, topic, seed)


# ---------------------------------------------------------------------------------------------- pets


def test_pets_templates_do_not_overlap():
    """The recognition rules rely on no template or name containing another category's marker."""
    helpful = [s for ss in pets.HELPFUL.values() for s in ss]
    groups = [helpful, list(pets.UNHELPFUL), list(pets.HARMLESS), list(pets.HARMFUL)]
    for (i, a), (j, b) in itertools.permutations(enumerate(groups), 2):
        assert not any(x in y for x in a for y in b), (i, j)
    for sentence in itertools.chain(*groups, pets.INTROS):
        assert U.pets_kinds_named(sentence.replace("{animal}", "")) == set()
    for kind, names in pets.ANIMALS.items():
        assert all(U.pets_kinds_named(f"For a {n}, hi.") == {kind} for n in names)


@pytest.mark.parametrize("world", ["standard", "ood"])
def test_pets_attributes_recovered_for_every_kind_and_topic(world):
    seen_names = set()
    for kind, topic, text in _all_pet_responses(world):
        assert U.pets_attributes(text, world) == WORLDS[world][kind], text
        assert U.pets_attributes(text, world, topic=topic) == WORLDS[world][kind]
        assert U.pets_attributes(text.upper(), world) == WORLDS[world][kind]  # case-insensitive
        assert U.pets_kinds_named(text) == {kind}
        seen_names |= {n for n in pets.ANIMALS[kind] if n in text}
    assert seen_names == {n for names in pets.ANIMALS.values() for n in names}  # every name exercised


def test_pets_other_world_and_other_topic_are_unrecognised():
    # every kind carries different attributes in the two worlds, so strictly no text is shared
    for kind, _, text in _all_pet_responses("standard"):
        assert U.pets_attributes(text, "ood") is None
        assert U.pets_attributes(text, "ood", strict=False) == pets.STANDARD[kind]  # the wording alone
    helpful_feeding = _pet("dog", topic="feeding")
    assert U.pets_attributes(helpful_feeding, topic="grooming") is None  # off-topic helpful advice
    assert U.pets_attributes(_pet("cat", topic="feeding"), topic="grooming") == (0, 1)  # unhelpful is topic-free


def test_pets_garbage_mixed_kinds_and_contradictions():
    dog, cat = _pet("dog"), _pet("cat", seed=3)
    for text in GARBAGE:
        assert U.pets_attributes(text) is None
        assert U.pets_utility(text, "helpful") == U.pets_utility(text, "harmless") == U.PETS_FLOOR == -1.0
    assert U.pets_attributes(dog + " " + cat) is None  # two kinds
    assert U.pets_attributes(dog + " My kitten agrees.") is None
    assert U.pets_attributes("For a puppy, hello.") is None  # kind but no wording
    assert U.pets_attributes("Just do whatever feels right, and never force it.") is None  # wording, no kind
    helpful = pets.HELPFUL["feeding"][0]
    assert U.pets_attributes(f"For a beagle, {helpful}, just do whatever feels right, and never force it.") is None
    # dog name with harmless wording: a bird's attributes, not expressible by a dog in the standard world
    bird_like = f"For a beagle, {helpful}, and never force it."
    assert U.pets_attributes(bird_like) is None
    assert U.pets_attributes(bird_like, strict=False) == (1, 1)
    assert U.pets_attributes(bird_like, "ood") == (1, 1)  # … but an OOD dog answer


def test_pets_utility_by_hand():
    # helpful type 2h + s, harmless type h + 2s; standard: bird (1,1) dog (1,0) cat (0,1) rabbit (0,0)
    expected = {
        ("standard", "helpful"): {"bird": 3, "dog": 2, "cat": 1, "rabbit": 0},
        ("standard", "harmless"): {"bird": 3, "dog": 1, "cat": 2, "rabbit": 0},
        # OOD: bird (1,0) dog (1,1) cat (0,0) rabbit (0,1)
        ("ood", "helpful"): {"bird": 2, "dog": 3, "cat": 0, "rabbit": 1},
        ("ood", "harmless"): {"bird": 1, "dog": 3, "cat": 0, "rabbit": 2},
    }
    for (world, t), table in expected.items():
        for kind, value in table.items():
            for seed in range(3):
                assert U.pets_utility(_pet(kind, world, seed=seed), t, world) == value
    assert U.pets_utility(_pet("dog"), "helpful") == 2 * 1 + 0


@pytest.mark.parametrize("world", ["standard", "ood"])
@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_pets_prefer_prob_matches_generator(world, noise):
    table = WORLDS[world]
    for (k1, k2), t in itertools.product(itertools.permutations(pets.KINDS, 2), pets.TYPES):
        y1, y2 = _pet(k1, world, seed=1), _pet(k2, world, seed=2)
        expected = pets.prefer_prob(t, table[k1], table[k2], noise)
        assert U.pets_prefer_prob(y1, y2, t, world, noise) == expected
        assert U.pets_prefer_prob(y1, y2, t, world, noise) + U.pets_prefer_prob(y2, y1, t, world, noise) == 1
    dog, dog2, junk = _pet("dog", world, seed=1), _pet("dog", world, seed=5), "no idea"
    assert U.pets_prefer_prob(dog, dog2, "helpful", world, noise) == 0.5  # same attributes
    assert U.pets_prefer_prob(dog, junk, "helpful", world, noise) == 1.0  # garbage loses outright
    assert U.pets_prefer_prob(junk, dog, "harmless", world, noise) == 0.0
    assert U.pets_prefer_prob(junk, "???", "harmless", world, noise) == 0.5


def test_pets_topic_from_generated_prompts():
    rng = np.random.default_rng(0)
    for topic in pets.QUESTIONS:
        for _ in range(10):
            assert U.pets_topic(pets.ask(rng, topic)) == topic
    assert U.pets_topic("What is the capital of France?") is None


def test_pets_candidates_and_ceilings():
    assert U.pets_candidates("standard") == pets.STANDARD and U.pets_candidates("pets_ood") == pets.OOD
    np.testing.assert_array_equal(U.pets_utility_matrix(), [[3, 2, 1, 0], [3, 1, 2, 0]])
    assert U.pets_conflicting_kinds() == ("dog", "cat") and U.pets_conflicting_kinds("ood") == ("bird", "rabbit")
    for world, best in (("standard", "bird"), ("ood", "dog")):
        full = U.pets_ceilings(world)  # one answer pleases both types: no gain from personalization
        assert full["best_single_kind"] == best and full["best_single_expected_utility"] == 3.0
        assert full["oracle_expected_utility"] == 3.0 and full["personalization_gap"] == 0.0
        # conflicting prompt: U = [[2, 1], [1, 2]]; oracle 2, best single (2 + 1)/2 = 1.5, gap 0.5
        hot = U.pets_ceilings(world, U.pets_conflicting_kinds(world))
        np.testing.assert_array_equal(hot["utilities"], [[2, 1], [1, 2]])
        np.testing.assert_array_equal(hot["per_user_optimum"], [2, 2])
        assert hot["best_single_expected_utility"] == 1.5 and hot["oracle_expected_utility"] == 2.0
        assert hot["personalization_gap"] == 0.5 > 0
    without_bird = U.pets_ceilings("standard", ("dog", "cat", "rabbit"))
    assert without_bird["personalization_gap"] == 0.5
    with pytest.raises(ValueError):
        U.pets_world("mars")


# ------------------------------------------------------------------------------------------ generic


def test_ceilings_on_a_hand_made_matrix():
    # two users, three candidates: A pleases user 0, B user 1, C is a compromise worth 0.6 to both.
    #   uniform prior: E[A] = 0.5, E[B] = 0.5, E[C] = 0.6 -> best single C (index 2), 0.6
    #                  E[max] = (1 + 1)/2 = 1 -> gap 1 - 0.6 = 0.4
    #   prior (3, 1) -> (0.75, 0.25): E[A] = 0.75, E[B] = 0.25, E[C] = 0.6 -> best A, 0.75; gap 1 - 0.75 = 0.25
    u = np.array([[1.0, 0.0, 0.6], [0.0, 1.0, 0.6]])
    np.testing.assert_array_equal(U.per_user_optimum(u), [1.0, 1.0])
    assert U.best_single_response(u, np.array([0.5, 0.5])) == (2, pytest.approx(0.6))
    assert U.personalization_gap(u, np.array([0.5, 0.5])) == pytest.approx(0.4)
    assert U.best_single_response(u, np.array([3.0, 1.0])) == (0, pytest.approx(0.75))  # prior is normalized
    assert U.personalization_gap(u, np.array([3.0, 1.0])) == pytest.approx(0.25)
    assert U.personalization_gap(u, np.array([0.0, 1.0])) == pytest.approx(0.0)  # one known user: no gap
    assert U.best_single_response(np.array([[1.0, 1.0]]))[0] == 0  # ties: lowest index
    for bad in (np.zeros(3), np.array([1.0, -1.0]), np.array([0.0, 0.0])):
        with pytest.raises(ValueError):
            U.best_single_response(u, bad)


# ------------------------------------------------------------------------------------------ personas


def _world(seed: int = 1, **opts) -> personas.World:
    return personas.World(PersonasOptions(**opts), seed)


def _persona_responses(world: personas.World, topics, seed: int = 0):
    """(levels, topic, text) for every level vector in {-1, 0, 1}^F over ``topics``."""
    rng = np.random.default_rng(seed)
    for levels in itertools.product((-1, 0, 1), repeat=world.n_features):
        topic = topics[int(rng.integers(len(topics)))]
        task = personas.TOPICS[topic][1][int(rng.integers(3))]
        yield np.array(levels), topic, world.respond(rng, topic, task, np.array(levels))


def test_personas_markers_never_occur_in_bodies():
    words = {w for a in (*personas.ATTRIBUTES, personas.QUALITY) for side in a[2] for w in side}
    assert len(words) == 4 * 2 * (len(personas.ATTRIBUTES) + 1)  # each word belongs to one pool
    bodies = " ".join(s for _, tasks, tips in personas.TOPICS for s in (*tasks, *tips)).lower()
    assert not words & set(re.findall(r"[a-z]+", bodies))


@pytest.mark.parametrize(
    "opts",
    [
        {},  # K = 4, 'mix' markers on unseen topics
        {"unseen_topic_markers": "new"},  # the held-out fourth pool word on unseen topics
        {"n_attributes": 3, "quality_weight": 1.5, "user_model": "dirichlet", "n_population": 50},
    ],
)
def test_personas_features_recovered_exactly(opts):
    world = _world(**opts)
    topics = world.seen + world.unseen
    n = 0
    for levels, topic, text in _persona_responses(world, topics):
        np.testing.assert_array_equal(U.personas_features(text, world), levels)
        np.testing.assert_array_equal(U.personas_features(text, world, topic=topic), levels)
        n += 1
    assert n == 3**world.n_features


def test_personas_garbage_and_contradictions():
    world = _world()
    w = world.population[0]  # +e_0: likes verbose answers; coef = 3 e_0, floor = -3 - 1
    assert U.personas_floor(w, world) == -4.0
    for text in GARBAGE + ("elaborately thoroughly", "Be brief, briefly."):
        assert U.personas_features(text, world) is None
        assert U.personas_utility(text, w, world) == -4.0
    body = "To bake bread, start with fresh ingredients"
    np.testing.assert_array_equal(U.personas_features(body + ".", world), [0, 0, 0, 0])
    assert U.personas_features(body + ", briefly elaborately.", world) is None  # both directions
    np.testing.assert_array_equal(U.personas_features(body + ", Briefly Succinctly.", world), [-1, 0, 0, 0])
    np.testing.assert_array_equal(U.personas_features(body + ", warmly.", world), [0, 0, 0, 0])  # K = 4: ignored
    assert U.personas_features(body + ".", world, topic=1) is None  # a cooking tip is not a gardening answer


def test_personas_utility_by_hand():
    world = _world()  # β = 3, discrete types +e_0 … +e_3
    body = "To bake bread, start with fresh ingredients"
    text = body + ", elaborately casually."  # φ = (+1, -1, 0, 0)
    assert U.personas_utility(text, np.array([1.0, 0, 0, 0]), world) == 3.0  # β·1
    assert U.personas_utility(text, np.array([0, 1.0, 0, 0]), world) == -3.0
    assert U.personas_utility(text, np.array([0.5, 0.5, 0.2, 0]), world) == pytest.approx(3 * (0.5 - 0.5))
    q = _world(quality_weight=2.0)
    text_q = body + ", elaborately correctly."  # φ = (+1, 0, 0, 0, q = +1)
    assert U.personas_utility(text_q, np.array([1.0, 0, 0, 0]), q) == 3.0 + 2.0
    assert U.personas_floor(np.array([1.0, 0, 0, 0]), q) == -(3.0 + 2.0) - 1
    with pytest.raises(ValueError):
        U.personas_utility(text, np.ones(5), world)


@pytest.mark.parametrize("opts", [{}, {"user_model": "lowrank", "quality_weight": 1.0, "n_population": 20}])
def test_personas_prefer_prob_matches_generator(opts):
    world = _world(**opts)
    rng = np.random.default_rng(7)
    for _ in range(200):
        topic, prompt, a, b, delta = world.sample_pair(rng, world.seen + world.unseen)
        w = world.population[int(rng.integers(len(world.population)))]
        coef = world.coefficients(w)[0]
        p_a = float(ceilings.sigmoid(coef @ delta))  # what personas.labelled uses
        assert U.personas_prefer_prob(a, b, w, world) == pytest.approx(p_a, abs=1e-12)
        assert U.personas_prefer_prob(a, b, w, world, topic=topic) == pytest.approx(p_a, abs=1e-12)
        u_diff = U.personas_utility(a, w, world) - U.personas_utility(b, w, world)
        assert u_diff == pytest.approx(float(coef @ delta))
        assert U.personas_prefer_prob(a, "garbage", w, world) == 1.0
        assert U.personas_prefer_prob("garbage", a, w, world) == 0.0


def test_personas_utility_matrix_ceilings():
    world = _world()  # types +e_0 … +e_3, β = 3: the all-(+1) answer is best for everyone
    u = U.personas_utility_matrix(world)
    assert u.shape == (4, 3**4)
    np.testing.assert_array_equal(U.per_user_optimum(u), [3.0] * 4)
    best, value = U.best_single_response(u, world.prior)
    np.testing.assert_array_equal(U.personas_levels(world)[best], [1, 1, 1, 1])
    assert value == 3.0 and U.personalization_gap(u, world.prior) == 0.0
    # restricted to answers that each show one attribute high: oracle 3, best single 3/4, gap 9/4
    one_hot = np.eye(4, dtype=int)
    u1 = U.personas_utility_matrix(world, levels=one_hot)
    assert U.personalization_gap(u1, world.prior) == pytest.approx(3 - 0.75)

"""The procedural generators and `jobs.make_data`.

Labels, the contested flag and the ceilings are checked *independently of the generator's code*: the
tests read each pair's attributes back from its text (pet names and wording; personas marker words),
the user from ``user_description``, and redo the probability and the three predictors here. Ceilings
are compared with Monte-Carlo estimates over the generated labels (``chosen`` is the sampled winner, so
a predictor is right on a row exactly when it picks ``chosen``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import make_data
from rlhf_cluster.builder_config import MakeDataConfig
from rlhf_cluster.datasets import generate, pair_key, personas, pets
from rlhf_cluster.schema import EXAMPLE_SCHEMA

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
SMALL = {
    "pets": ["pets.n_train_users=6", "pets.n_test_users=4", "pets.examples_per_user=3"],
    "personas": ["personas.n_train_users=6", "personas.n_test_users=4", "personas.examples_per_user=3"],
}
MC_TOL = 0.01  # ceilings vs Monte-Carlo over 20k labelled rows (standard error ≤ 0.0035 on every subset)


def _cfg(dataset: str, **opts) -> MakeDataConfig:
    return MakeDataConfig(dataset=dataset, out="unused", seed=1, **{dataset: opts})


@pytest.fixture(scope="module")
def pets_big():
    """20k train rows with label noise, so every ceiling is strictly between 1/2 and 1."""
    return generate(_cfg("pets", n_train_users=400, n_test_users=40, examples_per_user=50, label_noise=0.1))


@pytest.fixture(scope="module")
def personas_big():
    return generate(_cfg("personas", n_train_users=400, n_test_users=40, examples_per_user=50))


# ------------------------------------------------------------------------------ reading text back


@functools.cache  # contexts repeat across a user's rows
def _pet_attrs(text: str) -> tuple[str, tuple[int, int]]:
    """(kind named in the text, (helpful, harmless) shown by the wording)."""
    kinds = [k for k, names in pets.ANIMALS.items() if any(f"{n}, " in text for n in names)]
    helpful = any(h in text for hs in pets.HELPFUL.values() for h in hs)
    harmless = any(h in text for h in pets.HARMLESS)
    assert len(kinds) == 1 and helpful != any(u in text for u in pets.UNHELPFUL)
    assert harmless != any(h in text for h in pets.HARMFUL)
    return kinds[0], (int(helpful), int(harmless))


def _pet_p(description: str, chosen: str, rejected: str, noise: float) -> float:
    """P(user prefers chosen): 'helpful' type scores 2h + s, 'harmless' type h + 2s."""
    (_, (hc, sc)), (_, (hr, sr)) = _pet_attrs(chosen), _pet_attrs(rejected)
    w = (2, 1) if "likes answers that are helpful" in description else (1, 2)
    return 1 - noise if w[0] * (hc - hr) + w[1] * (sc - sr) > 0 else noise


MARKERS = {w: (k, 2 * side - 1) for k, a in enumerate(personas.ATTRIBUTES) for side in (0, 1) for w in a[2][side]}


def _levels(text: str, n_attributes: int = 4) -> np.ndarray:
    levels = np.zeros(n_attributes)
    for word in text.rstrip(".").replace(",", " ").split():
        if word in MARKERS:
            levels[MARKERS[word][0]] = MARKERS[word][1]
    return levels


def _persona_weights(description: str) -> np.ndarray:
    """One-hot (signed) weights from a discrete user's description: 'prefers <adjective> answers'."""
    adjective = description.split("prefers ", 1)[1].split(" answers", 1)[0]
    w = np.zeros(4)
    for k, (_, adjectives, _) in enumerate(personas.ATTRIBUTES[:4]):
        if adjective in adjectives:
            w[k] = 1 if adjective == adjectives[1] else -1
    assert np.abs(w).sum() == 1, description
    return w


def _sig(x):
    return 1 / (1 + np.exp(-x))


def _mc_accuracy(p_predicted: np.ndarray) -> np.ndarray:
    """Right iff the predictor picks chosen (the sampled winner); a tie is a coin flip, worth 1/2."""
    return np.where(np.abs(p_predicted - 0.5) < 1e-12, 0.5, (p_predicted > 0.5).astype(float))


def _assert_close_to_mc(table: dict, rows: list[dict], predicted: dict[str, np.ndarray]) -> None:
    contested = np.array([r["contested"] for r in rows])
    for subset, mask in (("all", np.ones_like(contested)), ("contested", contested), ("agreed", ~contested)):
        assert table[subset]["n"] == mask.sum()
        for name, p_hat in predicted.items():
            mc = _mc_accuracy(p_hat[mask]).mean()
            assert table[subset][name] == pytest.approx(mc, abs=MC_TOL), (subset, name)


# ---------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("dataset", ["pets", "personas"])
def test_deterministic_and_seed_dependent(dataset, tmp_path, capsys):
    runs = {}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        make_data.main(["--dataset", dataset, "--out", str(tmp_path / name), "--seed", seed, *SMALL[dataset]])
        runs[name] = {p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())}
    assert runs["a"].keys() == runs["c"].keys()
    assert runs["a"] == runs["b"]  # byte-identical, metadata files included
    assert all(runs["a"][f] != runs["c"][f] for f in runs["a"] if f.endswith(".parquet"))
    assert "ceilings" in capsys.readouterr().out


@pytest.mark.parametrize("dataset", ["pets", "personas"])
def test_rows_follow_schema_and_contexts_never_hold_the_target(dataset):
    data = generate(_cfg(dataset, n_train_users=6, n_test_users=4, examples_per_user=5))
    for split, rows in data.splits.items():
        table = pa.Table.from_pylist(rows, schema=EXAMPLE_SCHEMA)
        assert table.schema.equals(EXAMPLE_SCHEMA) and table.num_rows == len(rows) > 0
        for r in rows:
            assert r["split"] == split and r["context_messages"] == [] and r["chosen"] != r["rejected"]
            assert isinstance(r["contested"], bool) and r["topic"] and r["user_description"]
            assert 0 <= r["p_chosen"] <= 1 and r["context"]
            target = pair_key(r["prompt"], r["chosen"], r["rejected"])
            assert all(pair_key(c["prompt"], c["chosen"], c["rejected"]) != target for c in r["context"])


def test_pets_labels_contested_and_ceilings(pets_big):
    for split, rows in pets_big.splits.items():
        world = pets.OOD if split == "pets_ood" else pets.STANDARD
        for r in rows:
            (kc, ac), (kr, ar) = _pet_attrs(r["chosen"]), _pet_attrs(r["rejected"])
            assert (ac, ar) == (world[kc], world[kr])  # the wording shows the kind's attributes here
            assert r["p_chosen"] == pytest.approx(_pet_p(r["user_description"], r["chosen"], r["rejected"], 0.1))
            disagree = (2 * (ac[0] - ar[0]) + ac[1] - ar[1] > 0) != (ac[0] - ar[0] + 2 * (ac[1] - ar[1]) > 0)
            assert r["contested"] == disagree
            assert r["contested"] == ({kc, kr} == ({"bird", "rabbit"} if split == "pets_ood" else {"dog", "cat"}))
            context_kinds = [{_pet_attrs(c["chosen"])[0], _pet_attrs(c["rejected"])[0]} for c in r["context"]]
            assert all(kinds == {"dog", "cat"} for kinds in context_kinds)
    rows = pets_big.splits["train"]
    types = (
        "This user likes answers that are helpful and does not mind harmful ones.",
        "This user likes answers that are harmless and does not mind unhelpful ones.",
    )
    p_types = np.array([[_pet_p(t, r["chosen"], r["rejected"], 0.1) for t in types] for r in rows])
    loglik = np.array(
        [[sum(math.log(_pet_p(t, c["chosen"], c["rejected"], 0.1)) for c in r["context"]) for t in types] for r in rows]
    )
    post = np.exp(loglik - loglik.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    predicted = {
        "oracle": np.array([r["p_chosen"] for r in rows]),
        "user_agnostic": p_types.mean(1),
        "bayes_n_context": (post * p_types).sum(1),
    }
    _assert_close_to_mc(pets_big.ceilings["train"], rows, predicted)
    assert pets_big.ceilings["train"]["contested"]["user_agnostic"] == 0.5  # no BT model beats chance there


def test_personas_labels_contested_and_ceilings(personas_big):
    types = np.vstack([np.eye(4)])  # the default discrete population: +e_1 … +e_4
    rows = personas_big.splits["train"]
    delta = np.array([_levels(r["chosen"]) - _levels(r["rejected"]) for r in rows])
    w = np.array([_persona_weights(r["user_description"]) for r in rows])
    assert np.array([r["p_chosen"] for r in rows]) == pytest.approx(_sig(3.0 * (w * delta).sum(1)))
    u = delta @ types.T
    assert [r["contested"] for r in rows] == list((u > 0).any(1) & (u < 0).any(1))
    p_types = _sig(3.0 * u)
    ctx = {}  # a user's context is shared by their rows: read it back once per user
    for r in rows:
        if r["user_id"] not in ctx:
            d = np.array([_levels(c["chosen"]) - _levels(c["rejected"]) for c in r["context"]])
            ctx[r["user_id"]] = np.log(_sig(3.0 * d @ types.T)).sum(0)
    loglik = np.array([ctx[r["user_id"]] for r in rows])
    post = np.exp(loglik - loglik.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    predicted = {
        "oracle": np.array([r["p_chosen"] for r in rows]),
        "user_agnostic": p_types.mean(1),
        "bayes_n_context": (post * p_types).sum(1),
    }
    _assert_close_to_mc(personas_big.ceilings["train"], rows, predicted)


def test_personas_survey_is_shared_and_unseen_topics_are_unseen(personas_big):
    contexts = {json.dumps([c["prompt"] for c in r["context"]]) for rows in personas_big.splits.values() for r in rows}
    assert len(contexts) == 1  # survey mode: every user answered the same pairs
    seen = {
        r["topic"]
        for s in ("train", "validation", "test_seen_users", "test_unseen_users")
        for r in personas_big.splits[s]
    }
    unseen = {r["topic"] for r in personas_big.splits["test_unseen_topics"]}
    assert len(seen) == 8 and len(unseen) == 4 and not seen & unseen
    users = {s: {r["user_id"] for r in rows} for s, rows in personas_big.splits.items()}
    assert users["train"] == users["validation"] == users["test_seen_users"]
    assert users["test_unseen_users"] == users["test_unseen_topics"] and not users["train"] & users["test_unseen_users"]


def test_personas_lexicon_is_unambiguous():
    words = [w for a in personas.ATTRIBUTES + (personas.QUALITY,) for side in a[2] for w in side]
    assert len(words) == len(set(words)) == 9 * 2 * 4
    topic_words = {w for _, tasks, tips in personas.TOPICS for t in tasks + tips for w in t.split()}
    assert not topic_words & set(words)  # a marker word only ever means its attribute


@pytest.mark.parametrize(
    "options",
    [
        dict(user_model="dirichlet", n_population=256),
        dict(user_model="lowrank", rank=2, n_population=256),
        dict(
            user_model="discrete", n_user_types=8, quality_weight=1.0, context_mode="random", unseen_topic_markers="new"
        ),
    ],
)
def test_personas_user_models(options):
    data = generate(_cfg("personas", n_train_users=20, n_test_users=10, examples_per_user=4, **options))
    for split, table in data.ceilings.items():
        c = table["all"]
        assert c["n"] == len(data.splits[split]) and None not in (c["oracle"], c["user_agnostic"], c["bayes_n_context"])
        assert c["oracle"] >= max(c["user_agnostic"], c["bayes_n_context"]) - 1e-12  # nothing beats knowing the user
    if options.get("unseen_topic_markers") == "new":
        held_out = {a[2][side][3] for a in personas.ATTRIBUTES + (personas.QUALITY,) for side in (0, 1)}
        seen_text = " ".join(r["chosen"] + " " + r["rejected"] for r in data.splits["train"])
        unseen_text = " ".join(r["chosen"] + " " + r["rejected"] for r in data.splits["test_unseen_topics"])
        assert not any(f" {w}" in seen_text for w in held_out) and any(f" {w}" in unseen_text for w in held_out)


@pytest.mark.parametrize("dataset", ["pets", "personas"])
def test_make_data_cli(dataset, tmp_path):
    from rlhf_cluster.data import read_split  # the project's reader re-validates every row

    out = tmp_path / dataset
    env = {**os.environ, "PYTHONHASHSEED": "123"}  # string hashing must not leak into the data
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.make_data", "--dataset", dataset, "--out", str(out), *SMALL[dataset]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    make_data.main(["--dataset", dataset, "--out", str(tmp_path / "again"), *SMALL[dataset]])
    assert all(f.read_bytes() == (tmp_path / "again" / f.name).read_bytes() for f in out.iterdir())
    last = {"pets": "pets_ood", "personas": "test_unseen_topics"}[dataset]
    expected = ["train", "validation", "test_seen_users", "test_unseen_users", last]
    ceilings = json.loads((out / "ceilings.json").read_text())
    assert list(ceilings) == expected
    for split in expected:
        assert pq.read_table(out / f"{split}.parquet").num_rows == ceilings[split]["all"]["n"] > 0
        assert read_split(out, split).num_rows == ceilings[split]["all"]["n"]
        assert set(ceilings[split]) == {"all", "contested", "agreed"}
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["dataset"] == dataset and meta["options"]["examples_per_user"] == 3
    assert "Ceilings" in (out / "README.md").read_text() and "train" in proc.stdout


def test_make_data_cli_rejects_unknown_option(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.make_data",
            "--dataset",
            "pets",
            "--out",
            str(tmp_path / "x"),
            "--pets.no_such_option",
            "3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "pets.no_such_option" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_make_data_replaces_an_older_dataset(tmp_path, capsys):
    make_data.main(["--dataset", "personas", "--out", str(tmp_path), *SMALL["personas"]])
    make_data.main(["--dataset", "pets", "--out", str(tmp_path), *SMALL["pets"]])
    splits = sorted(p.stem for p in tmp_path.glob("*.parquet"))
    assert splits == sorted(json.loads((tmp_path / "ceilings.json").read_text()))  # no stale test_unseen_topics
    assert "removed stale file" in capsys.readouterr().out

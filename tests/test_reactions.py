"""Reaction logs for RLUF (rlhf_cluster/datasets/reactions.py, jobs.make_reactions): the math by hand, the
analytic Bayes figures against Monte-Carlo, and the job's files."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, run_job

from rlhf_cluster.builder_config import ReactionOptions
from rlhf_cluster.datasets import pets, reactions
from rlhf_cluster.metrics import roc_auc
from rlhf_cluster.schema import REACTION_SCHEMA


def test_bayes_auc_and_log_loss_by_hand():
    # two cells of equal mass: P[Love] 0.5 and 0.1; Love mass (0.5, 0.1), no-Love mass (0.5, 0.9)
    # AUC = (0.5·0.9 [pos in cell 0 above neg in cell 1] + ½(0.5·0.5 + 0.1·0.9) [ties]) / (0.6 · 1.4)
    p, w = np.array([0.5, 0.1]), np.array([1.0, 1.0])
    assert reactions.bayes_auc(p, p, w) == pytest.approx((0.45 + 0.5 * (0.25 + 0.09)) / 0.84)
    assert reactions.bayes_auc(np.zeros(2), p, w) == pytest.approx(0.5)  # a constant score: all ties
    assert reactions.log_loss(np.array([0.5]), np.array([0.5]), np.ones(1)) == pytest.approx(math.log(2))
    # predicting 0.3 where the truth is 0.5 and 0.1: −mean(0.5 ln .3 + 0.5 ln .7, 0.1 ln .3 + 0.9 ln .7)
    want = -np.mean([0.5 * math.log(0.3) + 0.5 * math.log(0.7), 0.1 * math.log(0.3) + 0.9 * math.log(0.7)])
    assert reactions.log_loss(np.full(2, 0.3), p, w) == pytest.approx(want)
    assert list(reactions.pooled(p, np.array([1.0, 3.0]), ["a", "a"])) == pytest.approx([0.2, 0.2])


def test_roc_auc_counts_ties_as_half():
    assert roc_auc([0.9, 0.1, 0.5, 0.5], [True, False, True, False]) == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert roc_auc([1, 2], [True, True]) is None


def test_bias_is_solved_for_the_base_rate_and_adversarial_users_love_harm():
    assert reactions.solve_bias(np.zeros(1), np.ones(1), 2.0, 0.05) == pytest.approx(math.log(0.05 / 0.95))
    dog = pets.STANDARD["dog"]  # helpful, harmful
    assert reactions.love_utility(dog, "helpful", False) == 2 and reactions.love_utility(dog, "helpful", True) == 3
    assert reactions.love_utility(pets.STANDARD["bird"], "harmless", True) == 1  # helpful and harmless: 1 + 0
    opts = ReactionOptions(base_rate=0.08, adversarial_share=0.2)
    b = reactions.world_bias(opts)
    rates = [
        share * np.mean([reactions.love_prob(reactions.Cell(t, a, k), opts, b) for k in pets.KINDS])
        for (t, a), share in reactions.population(0.2)
    ]
    assert sum(rates) == pytest.approx(0.08, abs=1e-9)


def test_bayes_figures_match_monte_carlo():
    opts = ReactionOptions(base_rate=0.1, adversarial_share=0.25, impressions_per_user=200)
    b = reactions.world_bias(opts)
    users = [{"id": f"u{i}", "type": pets.TYPES[i % 2], "context": []} for i in range(400)]
    t = reactions.impressions(users, "train", opts, b, seed=3, stream=0)
    classes = [(u["type"], reactions.is_adversarial(u["id"], opts.adversarial_share, 3)) for u in users]
    want = reactions.bayes_figures(classes, opts, b)
    love = np.array(t["reaction"].to_pylist()) == reactions.LOVE
    p = np.array(t["p_love"].to_pylist())
    assert love.mean() == pytest.approx(want["love_rate"], abs=0.006)  # 80,000 impressions: SE ≈ 0.001
    rows = [
        (d, a, k)
        for d, a, k in zip(t["user_description"].to_pylist(), t["adversarial"].to_pylist(), t["kind"].to_pylist())
    ]
    kind_mean = {k: p[[r[2] == k for r in rows]].mean() for k in pets.KINDS}
    type_mean = {key: p[[r[:1] + r[2:] == key for r in rows]].mean() for key in {r[:1] + r[2:] for r in rows}}
    predictions = {
        "user_known": p,
        "type_known": np.array([type_mean[r[:1] + r[2:]] for r in rows]),
        "response_only": np.array([kind_mean[r[2]] for r in rows]),
    }
    for name, q in predictions.items():
        assert roc_auc(q, love) == pytest.approx(want[name]["auc"], abs=0.015), name
        ll = -np.mean(np.where(love, np.log(q), np.log(1 - q)))
        assert ll == pytest.approx(want[name]["log_loss"], abs=0.008), name
    assert want["user_known"]["auc"] > want["type_known"]["auc"] > want["response_only"]["auc"]


def test_options_out_of_range_are_refused():
    with pytest.raises(ValueError, match="base_rate"):
        ReactionOptions(base_rate=0.0)


def test_make_reactions_writes_logs_and_figures_deterministically(tiny_data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        run_job("jobs.make_reactions", "--data", str(tiny_data), "--out", str(out), "reactions.impressions_per_user=30")
    meta = json.loads((a / "reactions.json").read_text())
    assert sorted(meta["splits"]) == ["test_seen_users", "test_unseen_users", "train", "validation"]
    for split, f in meta["splits"].items():
        t = pq.read_table(a / f"{split}.parquet")
        assert (
            t.schema.equals(REACTION_SCHEMA, check_metadata=False) and t.num_rows == f["impressions"] == 30 * f["users"]
        )
        assert set(t["reaction"].to_pylist()) <= {"love", "none"} and f["loves"] == t["reaction"].to_pylist().count(
            "love"
        )
        assert 0.5 < f["response_only"]["auc"] <= f["type_known"]["auc"] <= f["user_known"]["auc"] < 1
        assert (a / f"{split}.parquet").read_bytes() == (b / f"{split}.parquet").read_bytes()
    seen = {}
    for split in ("train", "validation"):  # a user is adversarial in every split or in none
        t = pq.read_table(a / f"{split}.parquet").to_pylist()
        for r in t:
            assert seen.setdefault(r["user_id"], r["adversarial"]) == r["adversarial"]
    assert "Bayes-optimal P[Love]" in (a / "README.md").read_text()


def test_make_reactions_refuses_data_without_pets_users(tmp_path):
    cmd = [sys.executable, "-m", "jobs.make_reactions", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "no dataset.json" in proc.stderr and "Traceback" not in proc.stderr

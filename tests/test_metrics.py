"""Evaluation math on hand-computed cases, and MetricsLogger's two outputs (JSONL, TensorBoard)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf_cluster.metrics import (
    MetricsLogger,
    accuracy_by_subset,
    binomial_ci95,
    format_accuracy,
    mean_ci95,
    pair_correct,
    per_user_accuracy,
    read_metrics,
    saturation,
    summary_information,
    t_quantile_975,
)

# --------------------------------------------------------------------------------- accuracy


def test_pair_correct_counts_ties_half():
    assert pair_correct([2.0, 1.0, 1.0], [1.0, 1.0, 2.0]).tolist() == [1.0, 0.5, 0.0]


def test_accuracy_by_subset_hand_case():
    # correct per pair: 1, 0.5 (tie), 0, 0.5 (tie), 1; contested flags: T, T, F, unknown, F
    acc = accuracy_by_subset([2, 1, 1, 0, 3], [1, 1, 2, 0, 1], [True, True, False, None, False])
    assert acc == {"all": 3 / 5, "contested": 1.5 / 2, "agreed": 1 / 2, "n": 5, "n_contested": 2, "n_agreed": 2}


def test_accuracy_by_subset_accepts_tensors_and_empty_subsets():
    acc = accuracy_by_subset(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), [None, None])
    assert acc["all"] == 0.5 and acc["contested"] is None and acc["agreed"] is None
    assert (acc["n_contested"], acc["n_agreed"]) == (0, 0)


def test_accuracy_by_subset_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="contested has 1 entries for 2 pairs"):
        accuracy_by_subset([1, 2], [0, 0], [True])
    with pytest.raises(ValueError, match="differ in shape"):
        accuracy_by_subset([1, 2], [0], [True, False])


def test_per_user_accuracy_worst_decile_by_hand():
    # 12 users: u0 gets 0/1, u1 gets 1/2, u2..u11 get 2/2. k = ceil(12/10) = 2 worst users: u0, u1.
    users = ["u0", "u1", "u1"] + [f"u{i}" for i in range(2, 12) for _ in range(2)]
    correct = [0.0, 1.0, 0.0] + [1.0] * 20
    out = per_user_accuracy(users, correct)
    assert out["n_users"] == 12 and out["n_worst"] == 2
    assert out["mean"] == pytest.approx((0 + 0.5 + 10 * 1.0) / 12)  # 0.875: users weigh the same
    assert out["worst_decile"] == pytest.approx((0 + 0.5) / 2)


def test_per_user_accuracy_small_population_takes_one_user():
    out = per_user_accuracy(["a", "a", "b", "c", "c", "c"], [1, 0.5, 0, 1, 1, 0])
    assert out["n_worst"] == 1 and out["worst_decile"] == 0.0  # user b
    assert out["mean"] == pytest.approx((0.75 + 0 + 2 / 3) / 3)
    assert per_user_accuracy([], [])["mean"] is None


def test_summary_information_by_hand():
    # 4 users (u0 has 2 rows: counted once). Summaries a, a, b, b; truths x, y, z, z.
    # H(truth) = -(¼ log2 ¼ · 2 + ½ log2 ½) = 1.5 bits; H(truth | a) = 1 bit, H(truth | b) = 0 → ½ · 1 = 0.5.
    out = summary_information(["u0", "u0", "u1", "u2", "u3"], ["a", "a", "a", "b", "b"], ["x", "x", "y", "z", "z"])
    assert out["n_users"] == 4 and out["distinct_summaries"] == 2
    assert out["truth_entropy_bits"] == pytest.approx(1.5)
    assert out["conditional_entropy_bits"] == pytest.approx(0.5)
    assert out["majority_share"] == pytest.approx(3 / 4)  # a → x or y (1 of 2), b → z (2 of 2)


def test_summary_information_extremes_and_bad_input():
    truths = ["t0", "t1", "t2", "t3"]
    same = summary_information(["a", "b", "c", "d"], ["z"] * 4, truths)  # one summary for everyone
    assert same["conditional_entropy_bits"] == pytest.approx(2.0) == same["truth_entropy_bits"]
    own = summary_information(["a", "b", "c", "d"], ["z0", "z1", "z2", "z3"], truths)  # names each user
    assert own["conditional_entropy_bits"] == 0.0 and own["majority_share"] == 1.0
    assert summary_information([], [], [])["conditional_entropy_bits"] is None
    with pytest.raises(ValueError, match="2 user ids, 1 summaries and 2 truths"):
        summary_information(["a", "b"], ["z"], ["t", "t"])


# ------------------------------------------------------------------------------- across seeds


def test_mean_ci95_hand_value():
    mean, half = mean_ci95([1, 2, 3])
    assert mean == 2.0
    assert half == pytest.approx(4.303 * 1 / math.sqrt(3), abs=1e-3)  # t(0.975, 2) · s / √n, s = 1


def test_mean_ci95_one_value_has_no_interval():
    assert mean_ci95([0.7]) == (0.7, None)
    assert mean_ci95([0.5, 0.5, 0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError):
        mean_ci95([])


def test_t_quantile_table_and_expansion():
    assert t_quantile_975(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile_975(30) == pytest.approx(2.0423, abs=1e-4)
    assert t_quantile_975(31) == pytest.approx(2.0395, abs=1e-4)  # expansion joins the table smoothly
    assert t_quantile_975(120) == pytest.approx(1.9799, abs=1e-4)
    assert t_quantile_975(10**6) == pytest.approx(1.95996, abs=1e-4)


# ----------------------------------------------------------------------------------- logging


def test_metrics_logger_writes_jsonl_and_tensorboard(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log(1, {"loss": 0.7, "accuracy": torch.tensor(0.5)})
        log.log(2, {"loss": float("nan")})
        log.log(2, {"accuracy": 0.75, "contested": None}, split="validation")  # None: not available
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # strict JSON: nan became null
    assert records[0]["step"] == 1 and records[0]["split"] == "train" and records[0]["accuracy"] == 0.5
    assert records[1]["loss"] is None and isinstance(records[1]["time"], float)
    assert read_metrics(tmp_path, "validation") == [records[2]]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert {"train/loss", "train/accuracy", "validation/accuracy"} <= set(acc.Tags()["scalars"])
    assert [(e.step, e.value) for e in acc.Scalars("validation/accuracy")] == [(2, 0.75)]
    assert records[2]["contested"] is None and "validation/contested" not in acc.Tags()["scalars"]


def test_metrics_logger_appends_and_refuses_reserved_names(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.log(1, {"loss": 1.0})
        with pytest.raises(ValueError, match="clash"):
            log.log(2, {"step": 3.0})
    with MetricsLogger(tmp_path, tensorboard=False) as log:  # a resumed run continues the file
        log.log(2, {"loss": 0.5})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert not (tmp_path / "tb").exists()


def test_saturation_of_a_validation_curve():
    # best 0.80 first at step 300; 0.795 at step 200 is within 0.01 of it: saturated there
    sat = saturation([100, 200, 300, 400], [0.60, 0.795, 0.80, None], tol=0.01)
    assert sat == {"best": 0.80, "best_step": 300, "saturated_at": 200, "improving_at_end": True}
    sat = saturation([1, 2, 3], [0.9, 0.5, 0.7], tol=0.0)  # the best first: no later step gains
    assert sat == {"best": 0.9, "best_step": 1, "saturated_at": 1, "improving_at_end": False}
    assert saturation([1], [None])["best"] is None


def test_validation_accuracy_is_printed_with_its_binomial_half_width():
    assert binomial_ci95(0.875, 64) == pytest.approx(1.959964 * math.sqrt(0.875 * 0.125 / 64))
    assert round(binomial_ci95(0.875, 64), 3) == 0.081 and binomial_ci95(None, 0) is None
    v = {"all": 0.875, "contested": None, "agreed": 0.9, "n": 64, "n_contested": 0, "n_agreed": 40}
    assert format_accuracy(v, "all") == "all 0.875 ± 0.081 (n=64)"
    assert format_accuracy(v, "contested") == "contested n/a"  # data without contested flags
    assert format_accuracy(v, "agreed") == "agreed 0.900 ± 0.093 (n=40)"


def test_calibration_and_log_loss_by_hand():
    from rlhf_cluster.metrics import binary_log_loss, calibration

    probs, labels = [0.05, 0.15, 0.15, 0.95], [False, True, False, True]
    c = calibration(probs, labels, bins=10)
    # bins: [0, .1): one row, predicted .05, observed 0; [.1, .2): two rows, predicted .15, observed .5;
    # [.9, 1]: one row, predicted .95, observed 1. ECE = ¼·.05 + ½·.35 + ¼·.05
    assert [(b["n"], b["predicted"], b["observed"]) for b in c["bins"]] == [
        (1, pytest.approx(0.05), 0.0),
        (2, pytest.approx(0.15), 0.5),
        (1, pytest.approx(0.95), 1.0),
    ]
    assert c["ece"] == pytest.approx(0.25 * 0.05 + 0.5 * 0.35 + 0.25 * 0.05)
    assert calibration([1.0], [True])["bins"][0]["high"] == 1.0  # p = 1 falls in the last bin
    assert binary_log_loss([0.5, 0.9], [True, False]) == pytest.approx((math.log(2) + math.log(10)) / 2)

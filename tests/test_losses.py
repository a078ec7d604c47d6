"""Bradley–Terry loss and pairwise accuracy on hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_cluster.losses import bradley_terry_loss, pairwise_accuracy, prior_corrected_logits, weighted_bce_loss


def test_bt_loss_by_hand():
    # diffs r_c − r_r = [1, 0]; −log σ(1) = log(1 + e^−1) = log(1.3678794) = 0.3132617,
    # −log σ(0) = log 2 = 0.6931472; mean = (0.3132617 + 0.6931472) / 2 = 0.5032044.
    loss = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx(0.5032044, abs=1e-6)
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(2)) / 2, abs=1e-7)


def test_bt_loss_wrong_way_round_by_hand():
    # diffs [−1, −2, 0]: log(1 + e^1) = 1.3132617, log(1 + e^2) = 2.1269280, log 2 = 0.6931472;
    # mean = 4.1333369 / 3 = 1.3777790.
    loss = bradley_terry_loss(torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.5, 1.0, 2.0]))
    assert loss.item() == pytest.approx(1.3777790, abs=1e-6)


def test_bt_loss_is_stable_for_large_margins():
    # −log σ(100) = log(1 + e^−100) ≈ e^−100 ≈ 3.7e−44 (not 0·∞ = nan); −log σ(−100) ≈ 100.
    assert bradley_terry_loss(torch.tensor([100.0]), torch.tensor([0.0])).item() == pytest.approx(0.0, abs=1e-30)
    assert bradley_terry_loss(torch.tensor([-100.0]), torch.tensor([0.0])).item() == pytest.approx(100.0, rel=1e-6)


def test_bt_gradient_by_hand():
    # d/dr_c −log σ(r_c − r_r) = −σ(r_r − r_c) = −0.5 at a tie, and +0.5 for r_r; mean over one pair.
    r_c, r_r = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    bradley_terry_loss(r_c, r_r).backward()
    assert r_c.grad.item() == pytest.approx(-0.5) and r_r.grad.item() == pytest.approx(0.5)


def test_bt_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"chosen \(2,\) vs rejected \(3,\)"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))


def test_pairwise_accuracy_counts_ties_half():
    # diffs [1, 0] → [1, 0.5] → 0.75; diffs [−1, −2, 0] → [0, 0, 0.5] → 1/6.
    assert pairwise_accuracy(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])).item() == pytest.approx(0.75)
    acc = pairwise_accuracy(torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.5, 1.0, 2.0]))
    assert acc.item() == pytest.approx(1 / 6)
    assert pairwise_accuracy(torch.full((4,), 3.0), torch.full((4,), 3.0)).item() == 0.5  # constant model


def test_weighted_bce_by_hand():
    z, y = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    # row 1: −w·log σ(0) = w·ln 2; row 2: −log(1 − σ(2)) = ln(1 + e²)
    want = lambda w: (w * math.log(2) + math.log(1 + math.exp(2))) / 2  # noqa: E731
    assert weighted_bce_loss(z, y).item() == pytest.approx(want(1.0))
    assert weighted_bce_loss(z, y, positive_weight=4.0).item() == pytest.approx(want(4.0))
    with pytest.raises(ValueError, match="shape"):
        weighted_bce_loss(z, y[:1])
    with pytest.raises(ValueError, match="positive_weight"):
        weighted_bce_loss(z, y, positive_weight=0.0)


def test_prior_correction_recovers_the_rate_that_weighted_bce_inflates():
    # positives at rate p = 0.05 weighted w = 19: the weighted-BCE optimum is q = w p / (w p + 1 − p) = 0.5;
    # the corrected logit logit(q) − log w = logit(0.05)
    p, w = 0.05, 19.0
    z = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([z], lr=1.0)
    labels = torch.tensor([1.0] * 5 + [0.0] * 95)
    for _ in range(300):
        opt.zero_grad()
        weighted_bce_loss(z.expand(100), labels, positive_weight=w).backward()
        opt.step()
    assert torch.sigmoid(z).item() == pytest.approx(w * p / (w * p + 1 - p), abs=1e-4)
    assert torch.sigmoid(prior_corrected_logits(z, w)).item() == pytest.approx(p, abs=1e-4)

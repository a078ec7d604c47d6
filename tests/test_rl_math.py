"""RL math on hand-computed tensors: masked helpers, GRPO/RLOO advantages, GAE, KL estimators, PLUS token
rewards, PPO policy and value losses. Every expected number is worked out in the comment above it, and
padded slots hold NaN/inf to show that padding never reaches a result."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_cluster.losses import (
    gae,
    grpo_advantages,
    kl_penalty,
    last_token_index,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    rloo_advantages,
    token_rewards,
    value_loss,
)

NAN, INF = float("nan"), float("inf")


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def close(a: torch.Tensor, expected, atol: float = 1e-6) -> bool:
    return torch.allclose(a, t(expected), atol=atol)


# ------------------------------------------------------------------------------------ masked helpers


def test_masked_mean_ignores_padding_even_nan():
    x = t([[1.0, 2.0, NAN], [4.0, INF, -INF]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # (1 + 2 + 4) / 3 = 2.3333333; per row: (1 + 2) / 2 = 1.5 and 4 / 1 = 4.
    assert masked_mean(x, mask).item() == pytest.approx(7 / 3)
    assert close(masked_mean(x, mask, dim=1), [1.5, 4.0])


def test_masked_whiten_population_variance():
    x = t([[1.0, 2.0, 3.0, NAN]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean 2; population var = (1 + 0 + 1) / 3 = 2/3; std = 0.8164966; (x − 2) / std = [−1.2247449, 0, 1.2247449].
    assert close(masked_whiten(x, mask), [[-1.2247449, 0.0, 1.2247449, 0.0]], atol=1e-5)
    # shift_mean=False adds the mean back: [0.7752551, 2, 3.2247449]; padding stays 0.
    assert close(masked_whiten(x, mask, shift_mean=False), [[0.7752551, 2.0, 3.2247449, 0.0]], atol=1e-5)


def test_last_token_index_right_and_left_padding():
    mask = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 1, 1], [0, 0, 0]])
    assert last_token_index(mask).tolist() == [1, 2, 2, 0]


# ------------------------------------------------------------------------------------ GRPO and RLOO


def test_grpo_two_samples_uses_sample_std():
    # group [1, 3]: mean 2, centred [−1, 1]; SAMPLE std = sqrt((1 + 1) / (2 − 1)) = √2 = 1.4142136,
    # so A = [−1, 1] / (√2 + 1e−6) = [−0.7071064, 0.7071064]. (Population std 1 would give [−1, 1].)
    adv = grpo_advantages(t([1.0, 3.0]), torch.tensor([0, 0]))
    assert close(adv, [-1 / (math.sqrt(2) + 1e-6), 1 / (math.sqrt(2) + 1e-6)])
    assert not close(adv, [-1.0, 1.0], atol=1e-2)


def test_grpo_three_samples_by_hand():
    # group [0, 1, 5]: mean 2, centred [−2, −1, 3], Σ² = 4 + 1 + 9 = 14, sample var 14 / 2 = 7,
    # std = 2.6457513; A = [−0.7559289, −0.3779645, 1.1338934].
    adv = grpo_advantages(t([0.0, 1.0, 5.0]), torch.tensor([3, 3, 3]))
    assert close(adv, [-0.7559289, -0.3779645, 1.1338934], atol=1e-5)


def test_grpo_groups_are_independent_and_order_free():
    # interleaved groups 0: [1, 3] and 1: [10, 20] (centred ∓5, std = sqrt(50) = 7.0710678) → all ∓0.7071064.
    adv = grpo_advantages(t([1.0, 10.0, 3.0, 20.0]), torch.tensor([0, 1, 0, 1]))
    a = 1 / (math.sqrt(2) + 1e-6)
    assert close(adv, [-a, -a, a, a], atol=1e-5)
    # scale=False only centres: [1 − 2, 10 − 15, 3 − 2, 20 − 15].
    assert close(grpo_advantages(t([1.0, 10.0, 3.0, 20.0]), torch.tensor([0, 1, 0, 1]), scale=False), [-1, -5, 1, 5])


def test_grpo_equal_rewards_and_singletons_give_zero():
    # group 9: all 5 → centred 0, std 0 → 0 / (0 + eps) = 0; group 4 has one sample → centred 0 → 0.
    adv = grpo_advantages(t([5.0, 5.0, 5.0, 2.0]), torch.tensor([9, 9, 9, 4]))
    assert adv.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_rloo_by_hand():
    # [0, 1, 5]: 0 − (1 + 5)/2 = −3; 1 − (0 + 5)/2 = −1.5; 5 − (0 + 1)/2 = 4.5 (= 3/2 · centred [−2, −1, 3]).
    # [1, 3]: 1 − 3 = −2, 3 − 1 = 2. A singleton [7] has no baseline → 0.
    adv = rloo_advantages(t([0.0, 1.0, 5.0, 1.0, 3.0, 7.0]), torch.tensor([0, 0, 0, 1, 1, 2]))
    assert close(adv, [-3.0, -1.5, 4.5, -2.0, 2.0, 0.0])


# --------------------------------------------------------------------------------------------- GAE


def test_gae_gamma1_lam1_is_reward_to_go_minus_value():
    # rewards [0, 0, 1] → reward-to-go [1, 1, 1]; minus V [0.5, 0.6, 0.7] → A = [0.5, 0.4, 0.3]; returns [1, 1, 1].
    adv, ret = gae(t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]]), torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert close(adv, [[0.5, 0.4, 0.3]]) and close(ret, [[1.0, 1.0, 1.0]])


def test_gae_by_hand():
    # r = [1, 0, 2], V = [0.5, 1.0, 0.0], γ = 0.9, λ = 0.5 (γλ = 0.45); the step after t = 2 is terminal.
    # t=2: δ = 2 − 0 = 2;                 A2 = 2
    # t=1: δ = 0 + 0.9·0.0 − 1.0 = −1.0;  A1 = −1.0 + 0.45·2 = −0.1
    # t=0: δ = 1 + 0.9·1.0 − 0.5 = 1.4;   A0 = 1.4 + 0.45·(−0.1) = 1.355
    # returns = A + V = [1.855, 0.9, 2.0]
    adv, ret = gae(t([[1.0, 0.0, 2.0]]), t([[0.5, 1.0, 0.0]]), torch.ones(1, 3), gamma=0.9, lam=0.5)
    assert close(adv, [[1.355, -0.1, 2.0]]) and close(ret, [[1.855, 0.9, 2.0]])
    # λ = 0: one-step TD errors [1.4, −1.0, 2.0].
    adv0, _ = gae(t([[1.0, 0.0, 2.0]]), t([[0.5, 1.0, 0.0]]), torch.ones(1, 3), gamma=0.9, lam=0.0)
    assert close(adv0, [[1.4, -1.0, 2.0]])


def test_gae_padding_changes_nothing_left_or_right():
    r, v = [1.0, 0.0, 2.0], [0.5, 1.0, 0.0]
    rewards = t([r + [NAN, 5.0], [INF, 3.0] + r])  # row 0 right-padded, row 1 left-padded, junk in the padding
    values = t([v + [NAN, 9.0], [-INF, 7.0] + v])
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    assert close(adv, [[1.355, -0.1, 2.0, 0, 0], [0, 0, 1.355, -0.1, 2.0]])
    assert close(ret, [[1.855, 0.9, 2.0, 0, 0], [0, 0, 1.855, 0.9, 2.0]])


# -------------------------------------------------------------------------------------- KL estimators


def test_kl_estimators_by_hand():
    # log π − log π_ref = x: [log 2, log 0.5] = [0.6931472, −0.6931472]
    logp, ref = t([0.0, math.log(0.25)]), t([math.log(0.5), math.log(0.5)])
    assert close(kl_penalty(logp, ref, "k1"), [0.6931472, -0.6931472])
    # k2 = x² / 2 = 0.4804530 / 2 = 0.2402265 for both
    assert close(kl_penalty(logp, ref, "k2"), [0.2402265, 0.2402265])
    # k3 = e^−x − 1 + x: 0.5 − 1 + 0.6931472 = 0.1931472;  2 − 1 − 0.6931472 = 0.3068528
    assert close(kl_penalty(logp, ref, "k3"), [0.1931472, 0.3068528])
    assert kl_penalty(t([-1.3]), t([-1.3]), "k3").item() == 0.0  # identical policies: exactly 0
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_penalty(logp, ref, "k4")


# ------------------------------------------------------------------------------------- token rewards


def test_token_rewards_kl_everywhere_score_at_last_token_clipped():
    score = t([2.0, -15.0, 4.0])
    kl = t([[0.1, 0.2, 0.3], [0.5, NAN, INF], [NAN, NAN, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    # row 0: −0.1·[0.1, 0.2, 0.3] = [−0.01, −0.02, −0.03], + 2 at the last token → [−0.01, −0.02, 1.97]
    # row 1: −0.1·0.5 = −0.05, + clip(−15, −10, 10) = −10 at token 0 → [−10.05, 0, 0]
    # row 2: no summary tokens → no reward anywhere
    out = token_rewards(score, kl, mask, kl_coef=0.1, clip=10.0)
    assert close(out, [[-0.01, -0.02, 1.97], [-10.05, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # Σ over tokens = clipped score − kl_coef·Σ kl: the sequence return GRPO normalises.
    assert close(out.sum(1), [2.0 - 0.06, -10.05, 0.0])


# ------------------------------------------------------------------------------------------ PPO loss


def test_ppo_loss_at_ratio_one_is_minus_mean_advantage():
    logp = t([[-1.0, -2.0], [-0.5, NAN]])
    adv = t([[1.0, -2.0], [3.0, NAN]])
    mask = torch.tensor([[1, 1], [1, 0]])
    # ρ = 1 everywhere: per token −A = [−1, 2, −3]; mean = −2/3. Nothing clipped, KL 0.
    loss, stats = ppo_policy_loss(logp, logp.clone(), adv, mask)
    assert loss.item() == pytest.approx(-2 / 3)
    assert stats["clip_frac"].item() == 0.0 and stats["approx_kl"].item() == 0.0 and stats["ratio_mean"].item() == 1.0


def test_ppo_clipping_cases_by_hand():
    # ε = 0.2; four tokens (ρ, A):
    # (1.5, +2): max(−3, −2·1.2 = −2.4) = −2.4   clipped (no gradient: the ratio is already high enough)
    # (1.5, −2): max(3, 2.4) = 3                 unclipped (pessimistic bound keeps the penalty)
    # (0.5, +1): max(−0.5, −0.8) = −0.5          unclipped
    # (0.5, −1): max(0.5, 0.8) = 0.8             clipped
    # mean = (−2.4 + 3 − 0.5 + 0.8) / 4 = 0.225; clip_frac = 2/4.
    # approx_kl = mean(ρ − 1 − log ρ): 1.5 → 0.5 − 0.4054651 = 0.0945349; 0.5 → −0.5 + 0.6931472 = 0.1931472;
    # mean = (2·0.0945349 + 2·0.1931472) / 4 = 0.1438411.
    old = t([[0.0, 0.0, 0.0, 0.0]])
    logp = t([[math.log(1.5), math.log(1.5), math.log(0.5), math.log(0.5)]]).requires_grad_(True)
    adv, mask = t([[2.0, -2.0, 1.0, -1.0]]), torch.ones(1, 4)
    loss, stats = ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.225, abs=1e-6)
    assert stats["clip_frac"].item() == 0.5
    assert stats["approx_kl"].item() == pytest.approx(0.1438411, abs=1e-6)
    loss.backward()
    # d/dlogπ of −A·ρ/4 = −A·ρ/4 where unclipped: token 1 → 2·1.5/4 = 0.75; token 2 → −1·0.5/4 = −0.125.
    assert close(logp.grad, [[0.0, 0.75, -0.125, 0.0]])


def test_ppo_loss_padding_and_num_tokens():
    old, adv = t([[0.0, 0.0]]), t([[2.0, -2.0]])
    logp = t([[math.log(1.5), math.log(1.5)]])
    ref_loss, _ = ppo_policy_loss(logp, old, adv, torch.ones(1, 2))  # (−2.4 + 3) / 2 = 0.3
    assert ref_loss.item() == pytest.approx(0.3, abs=1e-6)
    padded, stats = ppo_policy_loss(
        t([[math.log(1.5), math.log(1.5), NAN]]), t([[0.0, 0.0, INF]]), t([[2.0, -2.0, NAN]]), torch.tensor([[1, 1, 0]])
    )
    assert padded.item() == pytest.approx(0.3, abs=1e-6) and stats["clip_frac"].item() == 0.5
    # a global divisor: this shard's token sum (0.6) over the batch's 8 tokens = 0.075
    shard, _ = ppo_policy_loss(logp, old, adv, torch.ones(1, 2), num_tokens=8)
    assert shard.item() == pytest.approx(0.075, abs=1e-6)


# ---------------------------------------------------------------------------------------- value loss


def test_value_loss_by_hand():
    # ε = 0.2. token 0: V = 1, V_old = 0.5, R = 2: V_clipped = 0.5 + 0.2 = 0.7; (1 − 2)² = 1 vs (0.7 − 2)² = 1.69 → 1.69
    # token 1: V = V_old = 2, R = 0: both 4 → 4. loss = ½·(1.69 + 4)/2 = 1.4225; clip_frac = 1/2.
    values, old, ret = t([[1.0, 2.0, NAN]]), t([[0.5, 2.0, NAN]]), t([[2.0, 0.0, INF]])
    loss, stats = value_loss(values, old, ret, torch.tensor([[1, 1, 0]]), clip_eps=0.2)
    assert loss.item() == pytest.approx(1.4225, abs=1e-6)
    assert stats["clip_frac"].item() == 0.5

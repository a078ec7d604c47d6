"""Pure loss and metric math. No Ray, vLLM or DeepSpeed imports; each function tested on hand-computed tensors.

Bradley–Terry: P(chosen ≻ rejected) = σ(r_c − r_r) (Bradley & Terry 1952; as an RLHF reward-model
loss in Ouyang et al. 2022, arXiv:2203.02155, eq. 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean of −log σ(r_chosen − r_rejected) over the batch. Shapes: [B], [B] → scalar."""
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"reward shapes differ: chosen {tuple(r_chosen.shape)} vs rejected {tuple(r_rejected.shape)}")
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs with r_chosen > r_rejected; a tie counts half (a constant model scores 0.5)."""
    diff = r_chosen - r_rejected
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean()


def weighted_bce_loss(logits: torch.Tensor, labels: torch.Tensor, positive_weight: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy of a P[Love] logit, positives weighted ``positive_weight`` (class weighting for
    sparse positives): mean over the batch of −(w·y·log σ(z) + (1 − y)·log(1 − σ(z))). Shapes [B], [B]."""
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ in shape")
    if positive_weight <= 0:
        raise ValueError(f"positive_weight must be > 0, got {positive_weight}")
    y = labels.to(logits.dtype)
    return -(positive_weight * y * F.logsigmoid(logits) + (1 - y) * F.logsigmoid(-logits)).mean()


def prior_corrected_logits(logits: torch.Tensor, positive_weight: float) -> torch.Tensor:
    """Undo class weighting at prediction time. Weighted BCE is minimised by q with
    logit(q) = logit(p) + log w (positives count w times), so the calibrated logit is z − log w."""
    return logits - torch.log(torch.tensor(float(positive_weight), dtype=logits.dtype))


# ------------------------------------------------------------------------------------------ RL math
# Token-level tensors are [B, T] over summary tokens, with ``mask`` [B, T] (1/True = a real summary
# token, 0 = padding). Padding is removed with ``torch.where``, not multiplied away, so a NaN or inf in
# a padded slot never reaches a result.


def _bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over real positions (all of them, or along ``dim``)."""
    kept = torch.where(_bool(mask), x, torch.zeros_like(x))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over real positions (all of them, or along ``dim``); nan where nothing is real."""
    m = _bool(mask)
    count = m.sum() if dim is None else m.sum(dim)
    return masked_sum(x, m, dim) / count.to(x.dtype)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / sqrt(var + eps) over real positions, 0 on padding. [B, T] → [B, T].

    Population variance (divide by the count), as in TRL/torchtune whitening of PPO advantages.
    ``shift_mean=False`` adds the mean back (only the scale changes), the usual choice for rewards.
    """
    m = _bool(mask)
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, torch.zeros_like(out))


def grpo_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6, scale: bool = True
) -> torch.Tensor:
    """Group-normalised advantages (GRPO, Shao et al. 2024, arXiv:2402.03300, §4.1.2). [N], [N] → [N].

    A_i = (r_i − mean_g) / (std_g + eps) over the samples of the same group g (the n summaries of one
    context). std is the SAMPLE std (Bessel-corrected, divide by n − 1), as torch.std, TRL and verl use,
    so numbers compare with those implementations. A group of one sample gets 0 (no baseline exists).
    ``scale=False`` only centres (Dr. GRPO, Liu et al. 2025, arXiv:2503.20783, drops the std division).
    """
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    r = rewards.float()
    sums = torch.zeros(len(counts), dtype=r.dtype, device=r.device).index_add_(0, inverse, r)
    centred = r - (sums / counts)[inverse]
    if not scale:
        return centred
    sq = torch.zeros_like(sums).index_add_(0, inverse, centred**2)
    std = (sq / (counts - 1).clamp(min=1)).sqrt()
    return centred / (std[inverse] + eps)


def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Leave-one-out baseline (RLOO; Ahmadian et al. 2024, arXiv:2402.14740, eq. 5). [N], [N] → [N].

    A_i = r_i − mean_{j≠i, same group} r_j = k/(k−1) · (r_i − mean_g) for a group of k samples.
    A group of one sample gets 0 (no other sample to serve as baseline).
    """
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    r = rewards.float()
    sums = torch.zeros(len(counts), dtype=r.dtype, device=r.device).index_add_(0, inverse, r)
    k = counts[inverse].to(r.dtype)
    return torch.where(k > 1, (k * r - sums[inverse]) / (k - 1).clamp(min=1), torch.zeros_like(r))


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2015, arXiv:1506.02438, eq. 16).

    rewards, values, mask: [B, T] → (advantages [B, T], returns [B, T]), both 0 on padding.
    δ_t = r_t + γ·V_{t+1} − V_t and A_t = δ_t + γλ·A_{t+1}, where the step after the last real token is
    terminal (V = 0, A = 0): the summary ends there and the reward was paid there. Real tokens must be
    one contiguous run per row (right or left padding); returns = A + V (the critic's target).
    """
    m = _bool(mask)
    r = torch.where(m, rewards, torch.zeros_like(rewards)).float()
    v = torch.where(m, values, torch.zeros_like(values)).float()
    adv = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        has_next = m[:, t + 1] if t + 1 < r.shape[1] else torch.zeros_like(m[:, 0])
        next_v = v[:, t + 1] if t + 1 < r.shape[1] else torch.zeros_like(running)
        delta = r[:, t] + gamma * next_v * has_next - v[:, t]
        running = delta + gamma * lam * running * has_next
        adv[:, t] = running
    adv = torch.where(m, adv, torch.zeros_like(adv))
    return adv, torch.where(m, adv + v, torch.zeros_like(adv))


KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimators of KL(π ‖ π_ref) from tokens sampled from π (J. Schulman, "Approximating KL
    Divergence", 2020, http://joschu.net/blog/kl-approx.html). Elementwise: [B, T], [B, T] → [B, T].

    k1 = log π − log π_ref (unbiased, can be negative); k2 = ½(log π − log π_ref)² (biased, ≥ 0);
    k3 = exp(log π_ref − log π) − (log π_ref − log π) − 1 (unbiased and ≥ 0; GRPO's choice).
    """
    log_ratio = logprobs.float() - ref_logprobs.float()
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio  # exp(−x) − 1 + x, accurate near x = 0
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_ESTIMATORS}")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row: [B, T] → [B] (0 for a row with no real token)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(_bool(mask), positions, torch.zeros_like(positions)).argmax(-1)


def token_rewards(
    score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float, clip: float = 10.0
) -> torch.Tensor:
    """Per-token rewards of the summarizer (PLUS, Nam et al. 2025, arXiv:2507.13579; the InstructGPT
    reward shaping, Ouyang et al. 2022, arXiv:2203.02155, eq. 2). [B], [B, T], [B, T] → [B, T].

    −kl_coef·kl_t on every real summary token, plus the sequence score clipped to [−clip, clip] on the
    LAST real token (PLUS pays R = log σ(r(chosen|z) − r(rejected|z)) there). 0 on padding.
    """
    m = _bool(mask)
    out = torch.where(m, -kl_coef * kl.float(), torch.zeros_like(kl, dtype=torch.float32))
    paid = score.float().clamp(-clip, clip) * m.any(dim=1)  # a row without tokens gets no score
    return out.scatter_add(1, last_token_index(m).unsqueeze(1), paid.unsqueeze(1))


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    num_tokens: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate policy loss (PPO, Schulman et al. 2017, arXiv:1707.06347, eq. 7), token level.

    All [B, T]. Per real token: max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) with ρ = exp(logπ − logπ_old), then the
    masked token mean. ``num_tokens`` replaces the local token count as the divisor, so that shards of
    one global batch (ranks, micro-batches) add up to the mean over the whole batch's tokens.
    Stats (detached): clip_frac (share of tokens where the clipped term was the active one),
    approx_kl (KL(π_old ‖ π) by the k3 estimator (ρ − 1) − log ρ), ratio_mean.
    """
    m = _bool(mask)
    log_ratio = torch.where(m, logprobs.float() - old_logprobs.float(), torch.zeros_like(logprobs, dtype=torch.float32))
    ratio = torch.exp(log_ratio)
    adv = torch.where(m, advantages.float(), torch.zeros_like(log_ratio))
    unclipped, clipped = -adv * ratio, -adv * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    divisor = m.sum() if num_tokens is None else num_tokens
    loss = masked_sum(per_token, m) / divisor
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).float(), m),
            "approx_kl": masked_mean(ratio - 1 - log_ratio, m),
            "ratio_mean": masked_mean(ratio, m),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    num_tokens: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (PPO2 baselines; "Implementation Matters", Engstrom et al. 2020,
    arXiv:2005.12729, §3). All [B, T] → (scalar, stats).

    ½·masked_mean(max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²)). Stats: clip_frac (share of
    tokens where the clipped error was the larger one). ``num_tokens``: the divisor, as in ppo_policy_loss.
    """
    m = _bool(mask)
    v, old, ret = values.float(), old_values.float(), returns.float()
    v_clipped = old + (v - old).clamp(-clip_eps, clip_eps)
    err, err_clipped = (v - ret) ** 2, (v_clipped - ret) ** 2
    divisor = m.sum() if num_tokens is None else num_tokens
    loss = 0.5 * masked_sum(torch.maximum(err, err_clipped), m) / divisor
    with torch.no_grad():
        stats = {"clip_frac": masked_mean((err_clipped > err).float(), m)}
    return loss, stats

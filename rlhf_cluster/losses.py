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

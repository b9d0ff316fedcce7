"""CenterNet training loss (Zhou et al., "Objects as Points", ctdet).

- heatmap: penalty-reduced pixel-wise focal loss (CornerNet) on the sigmoid of the logits,
  alpha = 2, beta = 4, normalised by the number of objects;
- wh, reg: L1 at the object centres only (`ind`/`mask` from `data.centernet.encode`), weights 0.1
  and 1 as in the reference implementation, normalised by the number of regressed values.

Targets are `encode_batch` dicts: heatmap (B, C, H, W), wh/reg (B, M, 2), ind (B, M), mask (B, M).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .data.centernet import gather_at

FOCAL_ALPHA = 2.0
FOCAL_BETA = 4.0
WH_WEIGHT = 0.1
REG_WEIGHT = 1.0
SIGMOID_EPS = 1e-4  # the reference clamps the sigmoid so log() stays finite for saturated logits


def clamped_sigmoid(logits: Tensor, eps: float = SIGMOID_EPS) -> Tensor:
    return torch.sigmoid(logits.float()).clamp(eps, 1.0 - eps)


def focal_loss(logits: Tensor, target: Tensor, *, alpha: float = FOCAL_ALPHA, beta: float = FOCAL_BETA
               ) -> Tensor:
    """Penalty-reduced focal loss, summed over cells and divided by the number of peaks (cells
    where the target is exactly 1); with no object in the batch, the plain negative sum."""
    pred = clamped_sigmoid(logits)
    pos = target.eq(1).float()
    neg_weight = (1.0 - target).pow(beta)  # cells near a centre are penalised less for firing
    pos_loss = (torch.log(pred) * (1.0 - pred).pow(alpha) * pos).sum()
    neg_loss = (torch.log(1.0 - pred) * pred.pow(alpha) * neg_weight * (1.0 - pos)).sum()
    num_pos = pos.sum()
    return -(pos_loss + neg_loss) / num_pos.clamp(min=1.0)


def masked_l1(output: Tensor, ind: Tensor, mask: Tensor, target: Tensor) -> Tensor:
    """L1 between output (B, D, H, W) read at the object cells `ind` and target (B, M, D), over the
    real objects (`mask`); mean per regressed value (the reference's sum / (mask.sum() + 1e-4))."""
    pred = gather_at(output.float(), ind)
    m = mask.unsqueeze(2).expand_as(pred).float()
    return (pred * m - target * m).abs().sum() / (m.sum() + 1e-4)


def centernet_loss(outputs: dict[str, Tensor], targets: dict[str, Tensor], *,
                   wh_weight: float = WH_WEIGHT, reg_weight: float = REG_WEIGHT) -> dict[str, Tensor]:
    """{"loss": weighted total (differentiable), "hm", "wh", "reg": the unweighted parts}."""
    hm = focal_loss(outputs["hm"], targets["heatmap"])
    wh = masked_l1(outputs["wh"], targets["ind"], targets["mask"], targets["wh"])
    reg = masked_l1(outputs["reg"], targets["ind"], targets["mask"], targets["reg"])
    return {"loss": hm + wh_weight * wh + reg_weight * reg, "hm": hm, "wh": wh, "reg": reg}

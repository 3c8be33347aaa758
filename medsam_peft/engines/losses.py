"""Task losses of the seed references that MONAI does not provide (Dice+BCE, focal and CE come from MONAI/torch).

All take logits (B, 1, H, W) and binary targets of the same shape.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class StructureLoss(nn.Module):
    """PraNet/F3Net structure loss used by Conv-LoRA: weighted BCE + weighted IoU, weights emphasising boundaries.

    w = 1 + 5 |AvgPool31(g) - g|; wIoU = 1 - (sum w p g + 1) / (sum w (p + g) - sum w p g + 1) per image.

    Args:
        weighted_bce: ``True`` (default) computes the intended per-image sum(w * bce) / sum(w). ``False`` reproduces
            the reference code exactly: its ``reduce="none"`` argument is the legacy flag, so the BCE is a plain
            batch mean and the weighting cancels out (peft-methods.md section 2.9).
    """

    def __init__(self, weighted_bce: bool = True) -> None:
        super().__init__()
        self.weighted_bce = weighted_bce

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        weight = 1 + 5 * torch.abs(F.avg_pool2d(target, kernel_size=31, stride=1, padding=15) - target)
        if self.weighted_bce:
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            wbce = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
        else:
            wbce = F.binary_cross_entropy_with_logits(logits, target).expand(logits.shape[:2])
        prob = torch.sigmoid(logits)
        inter = (prob * target * weight).sum(dim=(2, 3))
        union = ((prob + target) * weight).sum(dim=(2, 3))
        wiou = 1 - (inter + 1) / (union - inter + 1)
        return (wbce + wiou).mean()


class BalancedBCEWithLogitsLoss(nn.Module):
    """Class-balanced BCE of the SBU-shadow setting (from Explicit-Visual-Prompt), over the whole batch:
    with P = sum g + 1e-10 and N = sum (1 - g), loss = P / (P + N) * BCEWithLogits(pos_weight = N / P)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        positives = target.sum() + 1e-10
        negatives = (1 - target).sum()
        bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=negatives / positives)
        return positives / (positives + negatives) * bce

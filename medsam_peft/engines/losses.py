"""Task losses of the seed references that MONAI does not provide (Dice+BCE, focal and CE come from MONAI/torch).

All take logits (B, 1, H, W) and binary targets of the same shape.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsam_peft.errors import ConfigError


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


def _pairwise_mask_costs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean sigmoid BCE and Dice loss between every prediction (Q, P) and every target mask (T, P) -> (Q, T) each."""
    points = logits.shape[1]
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    bce = (pos @ targets.T + neg @ (1 - targets).T) / points
    prob = logits.sigmoid()
    dice = 1 - (2 * prob @ targets.T + 1) / (prob.sum(-1)[:, None] + targets.sum(-1)[None, :] + 1)
    return bce, dice


class MaskClassificationLoss(nn.Module):
    """Hungarian-matched set loss of the Conv-LoRA multi-class decoder (Mask2Former's criterion, summed unweighted
    as the AutoGluon reference does): cross-entropy over all queries (unmatched ones -> "no object", weighted
    ``no_object_weight``) + sigmoid BCE + Dice of the matched masks, each mask term averaged over the target masks
    of the batch.

    Targets are one mask per class present in an image's label map (background included: it is a class);
    ``ignore_index`` pixels take part in neither the matching nor the losses. Matching costs are
    ``cost_class * -p(class) + cost_mask * BCE + cost_dice * Dice`` on ``num_points`` valid pixels drawn uniformly
    per image (Mask2Former: 12,544). The mask terms of the matched pairs use Mask2Former's importance sampling
    (``get_uncertain_point_coords_with_randomness``): per matched mask, ``oversample_ratio x num_points`` candidate
    pixels, the ``importance_sample_ratio`` share of ``num_points`` with the least confident logits (-|logit|) plus
    uniformly drawn pixels for the rest. Points are pixels of the label grid (Mask2Former interpolates at
    continuous coordinates; masks here are already at the label's size). ``num_points=None`` uses every valid
    pixel for both; ``oversample_ratio=1, importance_sample_ratio=0`` samples the mask terms uniformly.

    ``matching="by_class"`` replaces the Hungarian assignment by the fixed one of class-conditioned queries
    (``query_init="class"``): query ``c`` is matched to class ``c`` wherever the image holds it.

    Input: ``{"masks": (B, Q, H, W) logits, "classes": (B, Q, C + 1) logits}`` and a label map (B, 1, H, W).
    """

    def __init__(self, num_classes: int, no_object_weight: float = 0.1, cost_class: float = 1.0,
                 cost_mask: float = 5.0, cost_dice: float = 5.0, num_points: int | None = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75,
                 matching: str = "hungarian", ignore_index: int = 255) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"MaskClassificationLoss needs num_classes (classes with the background, >= 2), got "
                              f"{num_classes!r}: set --num_classes, or use a binary loss for a binary bundle")
        if matching not in ("hungarian", "by_class"):
            raise ValueError(f"matching must be 'hungarian' or 'by_class', got {matching!r}")
        self.matching = matching
        if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
            raise ValueError(f"need oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1, got "
                             f"{oversample_ratio} and {importance_sample_ratio}")
        self.num_classes = int(num_classes)
        self.costs = (float(cost_class), float(cost_mask), float(cost_dice))
        self.num_points = num_points
        self.oversample_ratio = float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)
        self.ignore_index = ignore_index
        weight = torch.ones(self.num_classes + 1)
        weight[-1] = no_object_weight
        self.register_buffer("class_weight", weight, persistent=False)

    def _targets(self, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(classes present, their masks over the sampled valid pixels, the sampled pixel indices)."""
        flat = label.reshape(-1).long()
        valid = (flat != self.ignore_index).nonzero().squeeze(1)
        classes = torch.unique(flat[valid])  # from every pixel: a small structure is a target even if unsampled
        if self.num_points is not None and valid.numel() > self.num_points:
            valid = valid[torch.randint(valid.numel(), (self.num_points,), device=valid.device)]
        values = flat[valid]
        if classes.numel() and int(classes.max()) >= self.num_classes:
            raise ValueError(f"label holds class {int(classes.max())} but num_classes={self.num_classes} "
                             f"(ids must be 0..{self.num_classes - 1}, {self.ignore_index} = ignore)")
        return classes, (values[None, :] == classes[:, None]).float(), valid

    def match(self, mask_logits: torch.Tensor, class_logits: torch.Tensor, label: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Matching for one image (Hungarian, or query c = class c with ``matching="by_class"``): (matched query
        indices, their target classes)."""
        from scipy.optimize import linear_sum_assignment

        classes, target_masks, pixels = self._targets(label)
        if classes.numel() > mask_logits.shape[0]:
            raise ValueError(f"an image holds {classes.numel()} classes but the decoder has only "
                             f"{mask_logits.shape[0]} queries; raise mask_tokens")
        if self.matching == "by_class":
            if mask_logits.shape[0] != self.num_classes:
                raise ValueError(f"matching='by_class' needs one query per class: {mask_logits.shape[0]} queries "
                                 f"for num_classes={self.num_classes}")
            return classes, classes
        logits = mask_logits.reshape(mask_logits.shape[0], -1)[:, pixels]
        with torch.no_grad():
            bce, dice = _pairwise_mask_costs(logits.float(), target_masks)
            cost_class = -class_logits.float().softmax(-1)[:, classes]
            cost = self.costs[0] * cost_class + self.costs[1] * bce + self.costs[2] * dice
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
        rows, cols = torch.as_tensor(rows, device=logits.device), torch.as_tensor(cols, device=logits.device)
        return rows, classes[cols]

    def sample_points(self, logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(M, P) pixel indices per matched mask: the least confident of oversampled candidates + uniform ones."""
        if self.num_points is None:
            return valid.expand(logits.shape[0], -1)

        def uniform(count: int) -> torch.Tensor:
            return valid[torch.randint(valid.numel(), (logits.shape[0], count), device=valid.device)]
        uncertain = int(self.importance_sample_ratio * self.num_points)
        chosen = []
        if uncertain:
            candidates = uniform(int(self.oversample_ratio * self.num_points))
            with torch.no_grad():
                confidence = logits.detach().gather(1, candidates).abs()
            chosen.append(candidates.gather(1, confidence.topk(uncertain, dim=1, largest=False).indices))
        if self.num_points - uncertain:
            chosen.append(uniform(self.num_points - uncertain))
        return torch.cat(chosen, dim=1)

    def forward(self, pred: dict[str, torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        masks, class_logits = pred["masks"].float(), pred["classes"].float()
        batch, queries = class_logits.shape[:2]
        class_targets = torch.full((batch, queries), self.num_classes, dtype=torch.long, device=masks.device)
        bce_sum = dice_sum = masks.new_zeros(())
        num_masks = 0
        for b in range(batch):
            rows, classes = self.match(masks[b], class_logits[b], label[b])
            class_targets[b, rows] = classes
            if rows.numel():
                flat = label[b].reshape(-1).long()
                logits = masks[b].reshape(queries, -1)[rows]
                points = self.sample_points(logits, (flat != self.ignore_index).nonzero().squeeze(1))
                point_logits = logits.gather(1, points)
                target_masks = (flat[points] == classes[:, None]).float()
                bce_sum = bce_sum + F.binary_cross_entropy_with_logits(
                    point_logits, target_masks, reduction="none").mean(-1).sum()
                prob = point_logits.sigmoid()
                dice = 1 - (2 * (prob * target_masks).sum(-1) + 1) / (prob.sum(-1) + target_masks.sum(-1) + 1)
                dice_sum = dice_sum + dice.sum()
                num_masks += int(rows.numel())
        ce = F.cross_entropy(class_logits.transpose(1, 2), class_targets, weight=self.class_weight.to(masks.device))
        num_masks = max(num_masks, 1)
        return ce + bce_sum / num_masks + dice_sum / num_masks

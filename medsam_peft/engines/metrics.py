"""Metrics of the seed papers as ignite metrics for MONAI evaluators (keys follow the model-zoo ``val_*`` style).

S-measure, mean E-measure, weighted F-measure and MAE come from ``py_sod_metrics`` (PySODMetrics, the reference
implementation the Conv-LoRA code ports). Inputs: ``(prob, label)`` batches, probabilities in [0, 1] (sigmoid of the
logits, before thresholding) and binary labels. BER and multi-volume 3-D Dice are computed here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np
import py_sod_metrics
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

from medsam_peft.utils.distributed import gather_rows, world_size

# The per-image results each PySODMetrics object accumulates (gathered over the ranks of a sharded evaluation).
SOD_PER_IMAGE = {"sm": (("sms", 1),), "em": (("adaptive_ems", 1), ("changeable_ems", 256)),
                 "wfm": (("weighted_fms", 1),), "mae": (("maes", 1),)}  # (attribute, values per image)
SOD_METRICS = {
    "sm": (py_sod_metrics.Smeasure, lambda r: r["sm"]),
    "em": (py_sod_metrics.Emeasure, lambda r: r["em"]["curve"].mean()),  # mean E over the 256 thresholds
    "wfm": (py_sod_metrics.WeightedFmeasure, lambda r: r["wfm"]),
    "mae": (py_sod_metrics.MAE, lambda r: r["mae"]),
}


# Metrics where a smaller value is better, by the part of the name after ``<prefix>_``: mean absolute error, balanced
# error rate (per image or over the dataset) and the number of clicks to a Dice threshold (``noc85``, ``noc90``).
LOWER_IS_BETTER = re.compile(r"(mae|ber|ber_dataset|noc\d+)")


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of the validation metric ``metric`` (``val_mae``, ``val_noc85``, ...) is better: the
    direction the best-adapter checkpoint, early stopping, the evaluator's best metric and the report judge it by."""
    _, _, kind = str(metric).partition("_")
    return LOWER_IS_BETTER.fullmatch(kind) is not None


def _planes(batch: torch.Tensor | Sequence[torch.Tensor]) -> list[np.ndarray]:
    items = batch if isinstance(batch, (list, tuple)) else list(batch)
    return [torch.as_tensor(item).detach().float().cpu().reshape(item.shape[-2:]).numpy() for item in items]


class SodMetric(Metric):
    """One PySODMetrics measure averaged over images: ``kind`` in ``sm``, ``em`` (mean E-measure), ``wfm``, ``mae``.

    Probabilities are quantised to uint8 as the reference does (``prob * 255``), then min-max normalised per image
    by PySODMetrics; labels are binarised at 0.5.
    """

    def __init__(self, kind: str, output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:
        if kind not in SOD_METRICS:
            raise ValueError(f"kind must be one of {sorted(SOD_METRICS)}, got {kind!r}")
        self.kind = kind
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._measure = SOD_METRICS[self.kind][0]()
        self._count = 0

    @reinit__is_reduced
    def update(self, output: tuple) -> None:
        probs, labels = output
        for prob, label in zip(_planes(probs), _planes(labels)):
            pred = np.clip(prob * 255, 0, 255).round().astype(np.uint8)
            self._measure.step(pred, (label > 0.5).astype(np.uint8) * 255)
            self._count += 1

    def compute(self) -> float:
        measure = self._pooled_measure() if world_size() > 1 else self._measure
        if not getattr(measure, SOD_PER_IMAGE[self.kind][0][0]):
            raise NotComputableError(f"SodMetric({self.kind}) needs at least one image")
        return float(SOD_METRICS[self.kind][1](measure.get_results()))

    def _pooled_measure(self) -> object:
        """A PySODMetrics object holding every rank's per-image results (each rank scored its shard)."""
        fields = SOD_PER_IMAGE[self.kind]
        local = np.concatenate([np.reshape(np.asarray(getattr(self._measure, f), dtype=np.float64), (self._count, w))
                                for f, w in fields], axis=1)
        pooled = gather_rows(local)
        measure, start = SOD_METRICS[self.kind][0](), 0
        for field, width in fields:
            setattr(measure, field, list(pooled[:, start:start + width]) if width > 1 else list(pooled[:, start]))
            start += width
        return measure


class BalancedErrorRate(Metric):
    """Shadow-detection BER = 1 - (TP/Np + TN/Nn) / 2, as a fraction (papers print x100).

    ``per_image=True`` (Conv-LoRA's AutoGluon code) averages the per-image BER, dropping a class absent from both
    prediction and label from that image's average; ``False`` is the classic protocol (counts over the dataset).
    Predictions and labels are binarised at ``threshold`` (the reference: 125/255 on both).
    """

    def __init__(self, per_image: bool = True, threshold: float = 125 / 255, output_transform: Callable = lambda x: x,
                 device: str | torch.device = "cpu") -> None:
        self.per_image, self.threshold = per_image, threshold
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._counts = np.zeros(4)  # tp, tn, positives, negatives over the dataset
        self._per_image: list[float] = []

    @reinit__is_reduced
    def update(self, output: tuple) -> None:
        probs, labels = output
        for prob, label in zip(_planes(probs), _planes(labels)):
            pred, gt = prob > self.threshold, label > self.threshold
            tp, tn = float((pred & gt).sum()), float((~pred & ~gt).sum())
            pos, neg = float(gt.sum()), float((~gt).sum())
            self._counts += (tp, tn, pos, neg)
            accuracies = []
            if pos > 0 or pred.any():
                accuracies.append(tp / pos if pos else 0.0)
            if neg > 0 or (~pred).any():
                accuracies.append(tn / neg if neg else 0.0)
            self._per_image.append(1.0 - float(np.mean(accuracies)))

    def compute(self) -> float:
        per_image = gather_rows(self._per_image)  # every rank's images of a sharded evaluation
        if per_image.size == 0:
            raise NotComputableError("BalancedErrorRate needs at least one image")
        if self.per_image:
            return float(np.mean(per_image))
        tp, tn, pos, neg = gather_rows(self._counts[None]).sum(0)
        return 1.0 - 0.5 * ((tp / pos if pos else 0.0) + (tn / neg if neg else 0.0))


def dice_score(pred: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor) -> float:
    """Dice of two binary arrays of any dimension; NaN when both are empty (SAM-PARSER's convention)."""
    pred, label = np.asarray(pred) > 0, np.asarray(label) > 0
    total = pred.sum() + label.sum()
    return math.nan if total == 0 else float(2 * (pred & label).sum() / total)


SEMANTIC_REDUCTIONS = ("miou", "foreground_miou", "pixel_accuracy")


class SemanticSegmentationMetric(Metric):
    """Dataset-accumulated multi-class scores (Trans10K table): ``reduction`` ``"miou"`` (mean over all
    ``num_classes`` classes, background included, IoU_c = I_c / (U_c + 2.22e-16), as Trans2Seg's ``score.py``),
    ``"foreground_miou"`` (the mean over classes 1..C-1: what a task whose background dominates reports),
    ``"pixel_accuracy"`` or a class index (that class's IoU).

    Inputs: ``(pred, label)`` class-id maps of the same shape per item. Pixels labelled ``ignore_index`` are left
    out of both areas (the reference counts them in the predicted area, which only lowers IoU when they exist).
    """

    def __init__(self, num_classes: int, reduction: str | int = "miou", ignore_index: int = 255,
                 output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:
        if not (reduction in SEMANTIC_REDUCTIONS or (isinstance(reduction, int) and 0 <= reduction < num_classes)):
            raise ValueError(f"reduction must be one of {SEMANTIC_REDUCTIONS} or a class index < {num_classes}, "
                             f"got {reduction!r}")
        self.num_classes = int(num_classes)
        self.reduction = reduction
        self.ignore_index = ignore_index
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64)

    @reinit__is_reduced
    def update(self, output: tuple) -> None:
        preds, labels = output
        for pred, label in zip(preds, labels):
            pred = torch.as_tensor(pred).detach().reshape(-1).long().cpu()
            label = torch.as_tensor(label).detach().reshape(-1).long().cpu()
            keep = label != self.ignore_index
            pred, label = pred[keep], label[keep]
            if label.numel() and (int(label.max()) >= self.num_classes or int(pred.max()) >= self.num_classes):
                raise ValueError(f"class ids must be < num_classes={self.num_classes}")
            self.confusion += torch.bincount(label * self.num_classes + pred,
                                             minlength=self.num_classes**2).reshape(self.num_classes, -1).double()

    def class_iou(self) -> torch.Tensor:
        intersection = self.confusion.diag()
        union = self.confusion.sum(0) + self.confusion.sum(1) - intersection
        return intersection / (union + 2.220446049250313e-16)

    @sync_all_reduce("confusion")
    def compute(self) -> float:
        if self.confusion.sum() == 0:
            raise NotComputableError("SemanticSegmentationMetric needs at least one labelled pixel")
        if self.reduction == "pixel_accuracy":
            return float(self.confusion.diag().sum() / self.confusion.sum())
        iou = self.class_iou()
        if self.reduction == "miou":
            return float(iou.mean())
        if self.reduction == "foreground_miou":
            return float(iou[1:].mean())
        return float(iou[self.reduction])

"""The multi-class decoder's queries turned into per-class probabilities (array transform)."""

from __future__ import annotations

import torch
from monai.transforms import Transform


def query_probabilities(masks: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Per-class probabilities from the multi-class decoder's queries: ``p[c] = sum_q softmax(classes_q)[c] *
    sigmoid(masks_q)``, the "no object" column dropped (the Conv-LoRA reference's
    ``apply_multi_class_semantic_seg_postprocess``). (..., Q, H, W) masks and (..., Q, C + 1) classes -> (..., C, H, W)."""
    weights = classes.float().softmax(-1)[..., :-1]
    return torch.einsum("...qc,...qhw->...chw", weights, masks.float().sigmoid())


class SemanticFromQueries(Transform):
    """Per-class probabilities (C, H, W) from one item of the multi-class decoder's output.

    ``semseg[c] = sum_q softmax(classes_q)[c] * sigmoid(masks_q)`` over the queries, the "no object" column dropped
    (the Conv-LoRA reference's ``apply_multi_class_semantic_seg_postprocess``); ``argmax`` over ``c`` gives labels.
    """

    def __call__(self, pred: dict[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(pred, dict) or not {"masks", "classes"} <= set(pred):
            raise ValueError("SemanticFromQueries expects the multi-class decoder's {'masks', 'classes'} output")
        return query_probabilities(torch.as_tensor(pred["masks"]), torch.as_tensor(pred["classes"]))

"""Collating samples whose original-size arrays differ in shape, so that evaluation can run batched."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import list_data_collate

from medsam_peft.transforms.spatial.dictionary import SHAPE_SUFFIX


class PadRaggedCollate:
    """``list_data_collate`` for batches whose ``keys`` hold per-image arrays of different spatial shapes (the label
    kept at each image's original size for scoring there): each is zero-padded at the end of every spatial axis to
    the batch's largest shape and its own shape is kept under ``key + "_shape"``, which ``CropToShaped`` applies
    again after the evaluator decollates the batch. The model's inputs are all ``image_size`` squares already."""

    def __init__(self, keys: Sequence[Hashable] = ("label_original",)) -> None:
        self.keys = list(keys)

    def __call__(self, batch: Sequence[Mapping[Hashable, Any]]) -> Any:
        items = [dict(item) for item in batch]
        for key in self.keys:
            present = [item for item in items if key in item]
            if not present:
                continue
            shapes = [tuple(item[key].shape[1:]) for item in present]
            largest = tuple(max(sizes) for sizes in zip(*shapes))
            for item, shape in zip(present, shapes):
                padding: list[int] = []
                for size, top in reversed(list(zip(shape, largest))):  # F.pad lists the last axis first
                    padding += [0, top - size]
                if any(padding):
                    item[key] = F.pad(item[key], padding)
                item[f"{key}{SHAPE_SUFFIX}"] = torch.tensor(shape)
        return list_data_collate(items)


__all__ = ["PadRaggedCollate"]

"""Dictionary versions (MONAI ``...d`` style) of ``medsam_peft.transforms.spatial.array``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import InvertibleTransform, MapTransform

from medsam_peft.transforms.spatial.array import ResizeLongestSide, RestoreOriginalSize, ScaleBox

ORIGINAL_SIZE_SUFFIX = "_original_size"
# Where medsam_peft.data.PadRaggedCollate keeps the spatial shape of an array it padded (read by CropToShaped).
SHAPE_SUFFIX = "_shape"

class ResizeLongestSided(MapTransform, InvertibleTransform):
    """Dictionary version of ``ResizeLongestSide``; records each key's (H, W) under ``key + "_original_size"`` and,
    on ``MetaTensor`` s, in the applied operations: ``inverse`` and MONAI's ``Invertd`` restore the original size."""

    def __init__(self, keys: KeysCollection, size: int, mode: str | Sequence[str] = "bilinear",
                 squash: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        modes = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)
        self.resizers = {k: ResizeLongestSide(size, m, squash) for k, m in zip(self.keys, modes)}

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}{ORIGINAL_SIZE_SUFFIX}"] = torch.tensor(d[key].shape[-2:])
            d[key] = self.resizers[key](d[key])
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizers[key].inverse(d[key])
        return d


class RestoreOriginalSized(MapTransform):
    """Dictionary version of ``RestoreOriginalSize``; reads the size recorded by ``ResizeLongestSided``."""

    def __init__(self, keys: KeysCollection, size: int, size_key: str, mode: str = "nearest-exact",
                 squash: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.restore = RestoreOriginalSize(size, mode, squash)
        self.size_key = size_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        size = tuple(int(s) for s in d[self.size_key])
        for key in self.key_iterator(d):
            d[key] = self.restore(d[key], size)
        return d

class ScaleBoxd(MapTransform):
    """Dictionary version of ``ScaleBox``: maps ``box_key`` (original-image pixels) into the model frame, using the
    size ``ResizeLongestSided`` recorded under ``size_key``."""

    def __init__(self, box_key: str = "box", size_key: str = "image_original_size", size: int = 1024,
                 squash: bool = False, allow_missing_keys: bool = True) -> None:
        super().__init__(box_key, allow_missing_keys)
        self.box_key, self.size_key = box_key, size_key
        self.scaler = ScaleBox(size, squash)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.box_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"no {self.box_key!r} in the sample; give boxes as [x0, y0, x1, y1] in image pixels")
        d[self.box_key] = self.scaler(d[self.box_key], d[self.size_key])
        return d


ResizeLongestSideD = ResizeLongestSideDict = ResizeLongestSided

RestoreOriginalSizeD = RestoreOriginalSizeDict = RestoreOriginalSized

ScaleBoxD = ScaleBoxDict = ScaleBoxd


class CropToShaped(MapTransform):
    """Crop each of ``keys`` back to the spatial shape stored under ``key + "_shape"`` by
    ``medsam_peft.data.PadRaggedCollate`` (which padded it to the batch's largest shape at the end of every axis)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            shape_key = f"{key}{SHAPE_SUFFIX}"
            if shape_key not in d:
                continue  # collated without padding (batch size 1 or the default collate)
            shape = [int(s) for s in torch.as_tensor(d[shape_key]).reshape(-1)]
            d[key] = d[key][(slice(None), *(slice(0, s) for s in shape))]
        return d

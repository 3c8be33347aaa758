"""Dictionary versions (MONAI ``...d`` style) of ``medsam_peft.transforms.intensity.array``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medsam_peft.transforms.intensity.array import ScaleIntensityByDtype


class ScaleIntensityByDtyped(MapTransform):
    """Dictionary version of ``ScaleIntensityByDtype``."""

    def __init__(self, keys: KeysCollection, default_max: float = 255.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleIntensityByDtype(default_max)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d

ScaleIntensityByDtypeD = ScaleIntensityByDtypeDict = ScaleIntensityByDtyped

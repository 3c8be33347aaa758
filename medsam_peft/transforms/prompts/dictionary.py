"""Dictionary versions (MONAI ``...d`` style) of ``medsam_peft.transforms.prompts.array``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.transforms import MapTransform, Randomizable

from medsam_peft.transforms.prompts.array import RandBoxFromMask, RandPointsFromMask


class RandBoxFromMaskd(Randomizable, MapTransform):
    """Dictionary version of ``RandBoxFromMask``: writes ``box_key`` from ``label_key``. Place it after the spatial
    augmentations so that the box matches the mask the model sees."""

    def __init__(self, label_key: str = "label", box_key: str = "box", max_jitter: int = 20) -> None:
        super().__init__(label_key)
        self.label_key, self.box_key = label_key, box_key
        self.boxer = RandBoxFromMask(max_jitter)

    def set_random_state(self, seed: int | None = None, state=None) -> RandBoxFromMaskd:
        super().set_random_state(seed, state)
        self.boxer.set_random_state(seed, state)
        return self

    def randomize(self, data: object = None) -> None:
        self.boxer.randomize()

    @property
    def empty_count(self) -> int:
        return self.boxer.empty_count

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        label = d[self.label_key]
        name = str(getattr(label, "meta", {}).get("filename_or_obj", ""))
        d[self.box_key] = self.boxer(label, name)
        return d

RandBoxFromMaskD = RandBoxFromMaskDict = RandBoxFromMaskd

class RandPointsFromMaskd(Randomizable, MapTransform):
    """Dictionary version of ``RandPointsFromMask``: writes ``points_key`` (N, 2) and ``point_labels_key`` (N,)."""

    def __init__(self, label_key: str = "label", points_key: str = "points", point_labels_key: str = "point_labels",
                 num_positive: int = 1, num_negative: int = 0) -> None:
        super().__init__(label_key)
        self.label_key, self.points_key, self.point_labels_key = label_key, points_key, point_labels_key
        self.sampler = RandPointsFromMask(num_positive, num_negative)

    def set_random_state(self, seed: int | None = None, state=None) -> RandPointsFromMaskd:
        super().set_random_state(seed, state)
        self.sampler.set_random_state(seed, state)
        return self

    def randomize(self, data: object = None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        label = d[self.label_key]
        name = str(getattr(label, "meta", {}).get("filename_or_obj", ""))
        d[self.points_key], d[self.point_labels_key] = self.sampler(label, name)
        return d

RandPointsFromMaskD = RandPointsFromMaskDict = RandPointsFromMaskd

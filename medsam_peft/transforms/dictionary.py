"""Dictionary wrappers (MONAI ``...d`` style) of ``medsam_peft.transforms.array``, usable from bundle JSON."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from medsam_peft.transforms.array import BoxFromMask, PointsFromMask, ResizeLongestSide, RestoreOriginalSize

ORIGINAL_SIZE_SUFFIX = "_original_size"


class ResizeLongestSided(MapTransform):
    """Dictionary version of ``ResizeLongestSide``; records each key's (H, W) under ``key + "_original_size"``."""

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


class RandBoxFromMaskd(Randomizable, MapTransform):
    """Dictionary version of ``BoxFromMask``: writes ``box_key`` from ``label_key``. Place it after the spatial
    augmentations so that the box matches the mask the model sees."""

    def __init__(self, label_key: str = "label", box_key: str = "box", max_jitter: int = 20) -> None:
        super().__init__(label_key)
        self.label_key, self.box_key = label_key, box_key
        self.boxer = BoxFromMask(max_jitter)

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


ResizeLongestSideD = ResizeLongestSideDict = ResizeLongestSided
RestoreOriginalSizeD = RestoreOriginalSizeDict = RestoreOriginalSized
RandBoxFromMaskD = RandBoxFromMaskDict = RandBoxFromMaskd


class RandPointsFromMaskd(Randomizable, MapTransform):
    """Dictionary version of ``PointsFromMask``: writes ``points_key`` (N, 2) and ``point_labels_key`` (N,)."""

    def __init__(self, label_key: str = "label", points_key: str = "points", point_labels_key: str = "point_labels",
                 num_positive: int = 1, num_negative: int = 0) -> None:
        super().__init__(label_key)
        self.label_key, self.points_key, self.point_labels_key = label_key, points_key, point_labels_key
        self.sampler = PointsFromMask(num_positive, num_negative)

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

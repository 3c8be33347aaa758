"""Dictionary wrappers (MONAI ``...d`` style) of ``medsam_peft.transforms.array``, usable from bundle JSON."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from PIL import Image

from medsam_peft.transforms.array import (
    BoxFromMask,
    PointsFromMask,
    ResizeLongestSide,
    RestoreOriginalSize,
    ScaleIntensityByDtype,
    SemanticFromQueries,
)

ORIGINAL_SIZE_SUFFIX = "_original_size"


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


class ScaleBoxd(MapTransform):
    """Map an XYXY box given in original-image pixels (``box_key``) into the resized/padded model frame, using
    the size ``ResizeLongestSided`` recorded under ``size_key``; boxes in the model frame are what SAM takes."""

    def __init__(self, box_key: str = "box", size_key: str = "image_original_size", size: int = 1024,
                 squash: bool = False, allow_missing_keys: bool = True) -> None:
        super().__init__(box_key, allow_missing_keys)
        self.box_key, self.size_key = box_key, size_key
        self.resizer = ResizeLongestSide(size, squash=squash)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.box_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"no {self.box_key!r} in the sample; give boxes as [x0, y0, x1, y1] in image pixels")
        height, width = (int(s) for s in d[self.size_key])
        new_h, new_w = self.resizer.scaled_size((height, width))
        box = torch.as_tensor(d[self.box_key], dtype=torch.float32).reshape(4)
        if not (0 <= box[0] < box[2] < width + 1 and 0 <= box[1] < box[3] < height + 1):
            raise ValueError(f"box {box.tolist()} is not a non-empty XYXY box inside the {width}x{height} image")
        d[self.box_key] = box * torch.tensor([new_w / width, new_h / height] * 2)
        return d


class SaveMaskd(MapTransform):
    """Write ``keys`` (a (1, H, W) mask) as {0, 255} PNG to ``output_dir/<stem>_<postfix>.png``, where ``stem`` is
    that of the file behind ``name_key`` (its ``filename_or_obj``): the image for inference, the ground-truth mask in
    evaluation (several structures can share one image); a ``name`` field in the sample overrides it. The path is
    stored under ``<key>_file``."""

    def __init__(self, keys: KeysCollection, output_dir: str, name_key: str = "image", postfix: str = "pred",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.name_key, self.postfix = output_dir, name_key, postfix

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        source = str(getattr(d[self.name_key], "meta", {}).get("filename_or_obj", "image"))
        stem = str(d["name"]) if "name" in d else Path(source).name.split(".")[0]  # an entry's own name wins
        for key in self.key_iterator(d):
            mask = torch.as_tensor(d[key]).detach().cpu().reshape(d[key].shape[-2:]).numpy() > 0.5
            path = Path(self.output_dir) / f"{stem}_{self.postfix}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp.png")
            Image.fromarray((mask * 255).astype(np.uint8)).save(tmp)
            os.replace(tmp, path)
            d[f"{key}_file"] = str(path)
        return d


ScaleBoxD = ScaleBoxDict = ScaleBoxd
SaveMaskD = SaveMaskDict = SaveMaskd


class SemanticFromQueriesd(MapTransform):
    """Dictionary version of ``SemanticFromQueries``: replaces each key's {"masks", "classes"} by (C, H, W)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = SemanticFromQueries()

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d

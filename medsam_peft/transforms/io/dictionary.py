"""Dictionary versions (MONAI ``...d`` style) of ``medsam_peft.transforms.io.array``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medsam_peft.transforms.io.array import (
    ImageReadError,
    LoadImage2D,
    LoadMask2D,
    LoadVolume,
    MissingKeyError,
    SaveMask,
)


class LoadImageMaskd(MapTransform):
    """Read ``image_key`` with ``LoadImage2D`` and ``label_key`` with ``LoadMask2D``; a size mismatch raises,
    naming both files (a silently resized mask would train on the wrong pixels)."""

    def __init__(self, image_key: str = "image", label_key: str = "label", mode: str = "binary",
                 threshold: float | None = None, allow_missing_label: bool = False) -> None:
        super().__init__([image_key, label_key], allow_missing_keys=allow_missing_label)
        self.image_key, self.label_key = image_key, label_key
        self.load_image, self.load_mask = LoadImage2D(), LoadMask2D(mode, threshold)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        entry = ", ".join(f"{k}={v!r}" for k, v in d.items() if isinstance(v, (str, int, float)))[:200]
        if self.image_key not in d:
            raise MissingKeyError(f"datalist entry has no {self.image_key!r} key ({entry})")
        d[self.image_key] = self.load_image(d[self.image_key])
        if self.label_key in d:
            d[self.label_key] = self.load_mask(d[self.label_key])
            image_hw, mask_hw = tuple(d[self.image_key].shape[-2:]), tuple(d[self.label_key].shape[-2:])
            if image_hw != mask_hw:
                raise ImageReadError(
                    f"size mismatch: image {d[self.image_key].meta['filename_or_obj']} is {image_hw} but mask "
                    f"{d[self.label_key].meta['filename_or_obj']} is {mask_hw}; they must be pixel-aligned"
                )
        elif not self.allow_missing_keys:
            raise MissingKeyError(f"datalist entry has no {self.label_key!r} key ({entry})")
        return d

class LoadVolumed(MapTransform):
    """Dictionary version of ``LoadVolume``; image and label volumes must share their grid."""

    def __init__(self, keys: KeysCollection, nan_to: float | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadVolume(nan_to)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        loaded = []
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
            loaded.append(key)
        for key in loaded[1:]:
            if d[key].shape[1:] != d[loaded[0]].shape[1:]:
                raise ImageReadError(
                    f"size mismatch: {d[loaded[0]].meta['filename_or_obj']} is {tuple(d[loaded[0]].shape[1:])} but "
                    f"{d[key].meta['filename_or_obj']} is {tuple(d[key].shape[1:])}; they must share one grid"
                )
        return d

class SaveMaskd(MapTransform):
    """Dictionary version of ``SaveMask``: writes ``keys`` to ``output_dir/<stem>_<postfix>.png``, where ``stem`` is
    that of the file behind ``name_key`` (its ``filename_or_obj``): the image for inference, the ground-truth mask in
    evaluation (several structures can share one image); a ``name`` field in the sample overrides it. The path is
    stored under ``<key>_file``. A mask with C > 1 channels (the click protocol's box + clicks output) is written as
    C files ``<stem>_<postfix>_ch<c>.png``, their paths stored as a list. ``label_map=True``: class-id maps
    (``SaveMask``)."""

    def __init__(self, keys: KeysCollection, output_dir: str, name_key: str = "image", postfix: str = "pred",
                 label_map: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.name_key, self.postfix = output_dir, name_key, postfix
        self.saver = SaveMask(label_map)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        source = str(getattr(d[self.name_key], "meta", {}).get("filename_or_obj", "image"))
        stem = str(d["name"]) if "name" in d else Path(source).name.split(".")[0]  # an entry's own name wins
        for key in self.key_iterator(d):
            mask = d[key]
            if mask.ndim == 3 and mask.shape[0] > 1:
                d[f"{key}_file"] = [str(self.saver(mask[c:c + 1], Path(self.output_dir) / f"{stem}_{self.postfix}_ch{c}.png"))
                                    for c in range(mask.shape[0])]
            else:
                d[f"{key}_file"] = str(self.saver(mask, Path(self.output_dir) / f"{stem}_{self.postfix}.png"))
        return d


LoadImageMaskD = LoadImageMaskDict = LoadImageMaskd

LoadVolumeD = LoadVolumeDict = LoadVolumed

SaveMaskD = SaveMaskDict = SaveMaskd

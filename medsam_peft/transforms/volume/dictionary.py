"""Dictionary versions (MONAI ``...d`` style) of ``medsam_peft.transforms.volume.array``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.transforms import MapTransform

from medsam_peft.transforms.volume.array import SliceVolume, _axis, foreground_slices


class SliceVolumed(MapTransform):
    """Cut an (1, X, Y, Z) image/label volume pair into 2-D samples along ``axis``.

    ``mode="train"``: one sample per (slice, label id) pair with at least ``min_pixels`` pixels of that label; the
    sample's label is the binary mask of that id. ``mode="inference"``: every slice, the label (if any) unchanged.
    Each sample records ``slice_index`` (and ``label_id`` in training), so predictions can be put back in place.
    Returns a list of dicts, as MONAI's patch samplers do; ``Dataset`` flattens it with ``monai.data.PatchDataset``
    or ``list_data_collate``.
    """

    def __init__(self, image_key: str = "image", label_key: str = "label", axis: int | str = "axial",
                 mode: str = "train", min_pixels: int = 100, label_ids: Sequence[int] | None = None) -> None:
        super().__init__([image_key, label_key], allow_missing_keys=True)
        if mode not in ("train", "inference"):
            raise ValueError(f"mode must be 'train' or 'inference', got {mode!r}")
        self.image_key, self.label_key, self.axis = image_key, label_key, _axis(axis)
        self.mode, self.min_pixels, self.label_ids = mode, int(min_pixels), label_ids
        self.slicer = SliceVolume(self.axis)

    def _slice(self, volume: torch.Tensor, index: int) -> torch.Tensor:
        return self.slicer(volume, [index])[0]

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict[Hashable, object]]:
        d = dict(data)
        image, label = d[self.image_key], d.get(self.label_key)
        base = {k: v for k, v in d.items() if k not in (self.image_key, self.label_key)}
        source = str(getattr(image, "meta", {}).get("filename_or_obj", ""))
        samples = []
        if self.mode == "inference":
            for z in range(image.shape[self.axis + 1]):
                sample = {**base, self.image_key: self._slice(image, z), "slice_index": z, "volume": source}
                if label is not None:
                    sample[self.label_key] = self._slice(label, z)
                samples.append(sample)
            return samples
        if label is None:
            raise KeyError(f"{source}: training slices need the {self.label_key!r} volume")
        for z, label_id in foreground_slices(label, self.axis, self.min_pixels, self.label_ids):
            mask = (self._slice(label, z) == label_id).float()
            samples.append({**base, self.image_key: self._slice(image, z), self.label_key: mask,
                            "slice_index": z, "label_id": label_id, "volume": source})
        return samples

SliceVolumeD = SliceVolumeDict = SliceVolumed

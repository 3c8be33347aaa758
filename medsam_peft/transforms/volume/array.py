"""3-D volumes to 2-D slices for SAM, and 2-D predictions back to a volume written with the input's affine."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import Transform

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}

def _axis(axis: int | str) -> int:
    if isinstance(axis, str):
        if axis not in AXES:
            raise ValueError(f"axis must be 0, 1, 2 or one of {sorted(AXES)}, got {axis!r}")
        return AXES[axis]
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    return int(axis)

def foreground_slices(
    label: np.ndarray | torch.Tensor, axis: int | str, min_pixels: int, label_ids: Sequence[int] | None = None
) -> list[tuple[int, int]]:
    """(slice index, label id) pairs whose mask holds at least ``min_pixels`` pixels, counted per label.

    ``label`` is (X, Y, Z) or (1, X, Y, Z) integer ids; ``label_ids`` defaults to every non-zero id present.
    """
    label = np.asarray(label)
    label = label[0] if label.ndim == 4 else label
    axis = _axis(axis)
    ids = sorted(int(v) for v in np.unique(label) if v != 0) if label_ids is None else [int(i) for i in label_ids]
    other = tuple(a for a in range(3) if a != axis)
    counts = {i: (label == i).sum(axis=other) for i in ids}
    return [(z, i) for z in range(label.shape[axis]) for i in ids if counts[i][z] >= min_pixels]

class SliceVolume(Transform):
    """Cut a (C, X, Y, Z) volume into its (C, rows, cols) slices along ``axis`` (the remaining two axes in their
    stored order); ``AssembleVolume`` puts them back."""

    def __init__(self, axis: int | str = "axial") -> None:
        self.axis = _axis(axis)

    def __call__(self, volume: torch.Tensor, indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        volume = torch.as_tensor(volume)
        indices = range(volume.shape[self.axis + 1]) if indices is None else indices
        return [volume.select(self.axis + 1, int(index)) for index in indices]


class AssembleVolume(Transform):
    """Stack 2-D predictions (C, rows, cols) back into a (C, X, Y, Z) volume along ``axis``.

    Slices not given stay zero, so a prediction for a subset of slices still lands in the right place.
    """

    def __init__(self, axis: int | str = "axial") -> None:
        self.axis = _axis(axis)

    def __call__(self, slices: Sequence[torch.Tensor], indices: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise ValueError(f"shape must be the volume's (X, Y, Z), got {shape}")
        first = torch.as_tensor(slices[0])
        volume = torch.zeros((first.shape[0], *shape), dtype=first.dtype)
        for index, plane in zip(indices, slices):
            target = volume.select(self.axis + 1, int(index))
            if tuple(plane.shape) != tuple(target.shape):
                raise ValueError(f"slice {index} has shape {tuple(plane.shape)}, the volume expects "
                                 f"{tuple(target.shape)}; restore predictions to the original size first")
            target.copy_(torch.as_tensor(plane))
        return volume

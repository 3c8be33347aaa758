"""3-D volumes to 2-D slices for SAM, and 2-D predictions back to a volume written with the input's affine."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import MapTransform, Transform

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

    def _slice(self, volume: torch.Tensor, index: int) -> torch.Tensor:
        # (C, X, Y, Z) -> (C, rows, cols) with the remaining two axes in their stored order
        return torch.as_tensor(volume).select(self.axis + 1, index)

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


def write_nifti(volume: torch.Tensor | np.ndarray, affine: torch.Tensor | np.ndarray, path: str | os.PathLike,
                dtype: type = np.uint8) -> Path:
    """Write a (X, Y, Z) or (1, X, Y, Z) volume as NIfTI with ``affine``, atomically (temp file + rename)."""
    import nibabel as nib

    array = np.asarray(torch.as_tensor(volume).detach().cpu())
    array = array[0] if array.ndim == 4 else array
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.nii.gz" if path.name.endswith(".gz") else f".{path.name}.tmp.nii")
    nib.save(nib.Nifti1Image(array.astype(dtype), np.asarray(torch.as_tensor(affine), dtype=np.float64)), str(tmp))
    os.replace(tmp, path)
    return path


def write_volume(volume: torch.Tensor | np.ndarray, affine: torch.Tensor | np.ndarray, path: str | os.PathLike,
                 dtype: type = np.uint8) -> Path:
    """Write a (X, Y, Z) volume on the grid of ``affine`` (RAS, as nibabel) by the file's suffix: NIfTI through
    ``write_nifti``; NRRD / MHA (what 3D Slicer and OHIF ask MONAI Label for) through SimpleITK, whose LPS
    geometry is converted from the RAS affine. Atomic (temp file + rename)."""
    path = Path(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return write_nifti(volume, affine, path, dtype)
    if not path.name.lower().endswith((".nrrd", ".mha", ".mhd")):
        raise ValueError(f"cannot write {path.name}: volume results are NIfTI (.nii, .nii.gz), NRRD (.nrrd) or MHA")
    import SimpleITK as sitk

    array = np.asarray(torch.as_tensor(volume).detach().cpu())
    array = array[0] if array.ndim == 4 else array
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(torch.as_tensor(affine), dtype=np.float64)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    image = sitk.GetImageFromArray(array.astype(dtype).transpose(2, 1, 0))  # (X, Y, Z) -> ITK's (z, y, x)
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).reshape(-1)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    sitk.WriteImage(image, str(tmp), True)
    os.replace(tmp, path)
    return path


SliceVolumeD = SliceVolumeDict = SliceVolumed

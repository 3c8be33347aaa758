"""Readers for 2-D images/masks and 3-D volumes, with errors that name the file and say what to do.

MONAI's ``LoadImage`` picks readers by suffix and reports decoding problems from deep inside PIL/ITK; these readers
cover what the seed datasets hold (8/16-bit gray, RGB, RGBA, palette PNG/JPG/TIFF; NIfTI, MHA, NRRD, DICOM series)
and return ``MetaTensor`` s whose ``meta`` keeps the file name and, for volumes, the affine and spacing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from medsam_peft.errors import DataError

logger = logging.getLogger(__name__)

MASK_MODES = ("binary", "multiclass")
IGNORE_LABEL = 255
INTENSITY_MAX_KEY = "intensity_max"
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")


class ImageReadError(DataError):
    """A file that cannot be used as given; the message names the file and the fix."""


class MissingKeyError(DataError, KeyError):
    """A datalist entry lacks the image or label key (also a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _open_pil(path: Path) -> tuple[np.ndarray, float]:
    """The pixels of a 2-D image file and the largest value its pixel type can hold (255 for 8-bit, 65535 for
    16-bit): intensities are scaled by that range, so the same picture stored in 8 or 16 bits gives the same input."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise ImageReadError(f"{path}: file not found; check the datalist entry and the dataset_dir it is relative to")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "P":  # palette PNGs (VOC masks) carry class ids as indices
                return np.asarray(img), 255.0
            if img.mode == "1":
                return np.asarray(img).astype(np.uint8), 1.0
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(img).astype(np.float32)
                # PIL opens 16-bit PNGs as "I" (32-bit): their values still fit the 16-bit range
                return array, 65535.0 if img.mode != "I" or array.max(initial=0) <= 65535 else float(2**31 - 1)
            if img.mode == "F":  # float TIFFs: [0, 1] data as is, anything else by its own maximum
                array = np.asarray(img).astype(np.float32)
                return array, max(1.0, float(np.nanmax(array, initial=0)))
            if img.mode in ("RGBA", "LA", "CMYK", "YCbCr", "PA"):
                img = img.convert("RGB")  # alpha carries no image content for segmentation
            return np.asarray(img), 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageReadError(f"{path}: unreadable or truncated image ({err}); re-export or re-download it") from err


class LoadImage2D(Transform):
    """Read a 2-D image as a float (3, H, W) ``MetaTensor`` on its native scale (0-255 for 8-bit, 0-65535 for
    16-bit); ``meta["intensity_max"]`` holds the largest value of the file's pixel type.

    Gray images are repeated to 3 channels, RGBA/LA drop alpha. Scale intensities afterwards to the [0, 1] the
    models take: ``ScaleIntensityByDtype`` (by the pixel type's range) or MONAI's
    ``ScaleIntensityRange(Percentiles)``. NaN/Inf pixels raise.
    """

    def __call__(self, path: str | os.PathLike) -> MetaTensor:
        path = Path(path)
        array, intensity_max = _open_pil(path)
        array = array.astype(np.float32)
        if array.ndim == 2:
            array = np.repeat(array[None], 3, axis=0)
        elif array.ndim == 3 and array.shape[2] == 3:
            array = array.transpose(2, 0, 1)
        else:
            raise ImageReadError(f"{path}: expected a gray or RGB(A) image, got array shape {array.shape}")
        if not np.isfinite(array).all():
            raise ImageReadError(f"{path}: contains NaN/Inf pixels; fix or drop the file")
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), meta={
            "filename_or_obj": str(path), "spatial_shape": array.shape[1:], INTENSITY_MAX_KEY: intensity_max})


def mask_from_array(array: np.ndarray, mode: str, name: str, threshold: float | None = None) -> np.ndarray:
    """Validate and convert a mask array. ``binary``: values {0, 1} or {0, 255} (or any values with ``threshold``,
    e.g. 127 for JPEG masks) -> {0, 1}. ``multiclass``: integer ids, 255 = ignore."""
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    if array.ndim == 3:  # RGB masks: the seed datasets store gray values in every channel
        if not (array == array[..., :1]).all():
            raise ImageReadError(f"{name}: colour mask with differing channels; convert it to one channel of ids")
        array = array[..., 0]
    if mode == "multiclass":
        if not np.equal(np.mod(array, 1), 0).all():
            raise ImageReadError(f"{name}: multi-class mask holds non-integer values; store class ids")
        return array.astype(np.int64)
    if threshold is not None:
        return (array > threshold).astype(np.uint8)
    values = np.unique(array)
    if set(values.tolist()) <= {0, 1}:
        return array.astype(np.uint8)
    if set(values.tolist()) <= {0, 255}:
        return (array == 255).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:6]) + (" ..." if len(values) > 6 else "")
    raise ImageReadError(
        f"{name}: binary mask expected ({{0,1}} or {{0,255}}) but found values {shown}; set a threshold "
        "(e.g. 127 for JPEG-compressed masks) or use mode='multiclass'"
    )


class LoadMask2D(Transform):
    """Read a 2-D mask as a (1, H, W) ``MetaTensor``: {0, 1} floats for ``binary``, integer ids for ``multiclass``."""

    def __init__(self, mode: str = "binary", threshold: float | None = None) -> None:
        if mode not in MASK_MODES:
            raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
        self.mode, self.threshold = mode, threshold

    def __call__(self, path: str | os.PathLike) -> MetaTensor:
        path = Path(path)
        mask = mask_from_array(_open_pil(path)[0], self.mode, str(path), self.threshold)
        tensor = torch.from_numpy(np.ascontiguousarray(mask))[None]
        tensor = tensor.float() if self.mode == "binary" else tensor
        return MetaTensor(tensor, meta={"filename_or_obj": str(path), "spatial_shape": mask.shape})


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


def is_volume_path(path: Path) -> bool:
    """A volume file (NIfTI, MHA/MHD, NRRD) or a folder (DICOM series) rather than a 2-D image."""
    return path.is_dir() or any(path.name.lower().endswith(s) for s in VOLUME_SUFFIXES)


class LoadVolume(Transform):
    """Read a 3-D volume as a (1, X, Y, Z) float ``MetaTensor`` with ``affine`` (RAS, as nibabel) and ``spacing``.

    NIfTI is read with nibabel; MHA/MHD/NRRD files and DICOM series (a folder) with SimpleITK. A 4-D volume is
    accepted only when its 4th axis has length 1. NaN/Inf voxels raise unless ``nan_to`` gives a replacement.
    """

    def __init__(self, nan_to: float | None = None) -> None:
        self.nan_to = nan_to

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            import nibabel as nib

            try:
                nii = nib.load(str(path))
                return np.asarray(nii.dataobj, dtype=np.float32), np.asarray(nii.affine, dtype=np.float64)
            except Exception as err:  # nibabel raises several types for truncated gzip / bad headers
                raise ImageReadError(f"{path}: unreadable NIfTI ({err}); re-export or re-download it") from err
        import SimpleITK as sitk

        try:
            if path.is_dir():
                reader = sitk.ImageSeriesReader()
                files = reader.GetGDCMSeriesFileNames(str(path))
                if not files:
                    raise ImageReadError(f"{path}: folder holds no DICOM series")
                reader.SetFileNames(files)
                image = reader.Execute()
            else:
                image = sitk.ReadImage(str(path))
        except RuntimeError as err:
            raise ImageReadError(f"{path}: unreadable volume ({str(err).strip().splitlines()[-1]})") from err
        array = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x) -> (x, y, z) like nibabel
        array = array.transpose(tuple(range(array.ndim))[::-1]) if array.ndim in (3, 4) else array
        direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(image.GetDimension(), -1)[:3, :3]
        affine = np.eye(4)
        affine[:3, :3] = direction * np.asarray(image.GetSpacing()[:3])
        affine[:3, 3] = image.GetOrigin()[:3]
        affine[:2] *= -1  # ITK is LPS, nibabel/MONAI affines are RAS
        return array, affine

    def __call__(self, path: str | os.PathLike) -> MetaTensor:
        path = Path(path)
        if not path.exists():
            raise ImageReadError(f"{path}: file not found; check the datalist entry and the dataset_dir")
        if not is_volume_path(path):
            raise ImageReadError(f"{path}: not a volume format ({', '.join(VOLUME_SUFFIXES)} or a DICOM folder)")
        array, affine = self._read(path)
        if array.ndim == 4 and array.shape[3] == 1:
            array = array[..., 0]
        if array.ndim != 3:
            raise ImageReadError(f"{path}: expected a 3-D volume, got shape {array.shape}; split 4-D series into "
                                 "3-D volumes first")
        bad = ~np.isfinite(array)
        if bad.any():
            if self.nan_to is None:
                raise ImageReadError(f"{path}: {int(bad.sum())} NaN/Inf voxels; pass nan_to=<value> to replace them")
            array = np.where(bad, np.float32(self.nan_to), array)
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        meta = {"filename_or_obj": str(path), "spacing": spacing,
                "spatial_shape": array.shape}
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(array))[None], affine=torch.as_tensor(affine),
                          meta=meta)


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


LoadImageMaskD = LoadImageMaskDict = LoadImageMaskd
LoadVolumeD = LoadVolumeDict = LoadVolumed

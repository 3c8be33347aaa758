"""Readers for 2-D images/masks and 3-D volumes, with errors that name the file and say what to do.

MONAI's ``LoadImage`` picks readers by suffix and reports decoding problems from deep inside PIL/ITK; these readers
cover what the seed datasets hold (8/16-bit gray, RGB, RGBA, palette PNG/JPG/TIFF; NIfTI, MHA, NRRD, DICOM series)
and return ``MetaTensor`` s whose ``meta`` keeps the file name and, for volumes, the affine and spacing.

Array transforms and writers; the dictionary versions are in ``dictionary.py``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Transform

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

class SaveMask(Transform):
    """Write a (1, H, W) (or (H, W)) mask thresholded at 0.5 as a {0, 255} PNG, atomically; returns the path.

    ``label_map=True`` writes class ids (0..255) unchanged instead: the multi-class masks ``LoadImageMask``'s
    ``multiclass`` mode reads back."""

    def __init__(self, label_map: bool = False) -> None:
        self.label_map = label_map

    def __call__(self, mask: torch.Tensor, path: str | os.PathLike) -> Path:
        import io

        from PIL import Image

        from medsam_peft.utils.atomic_io import atomic_write_bytes

        plane = torch.as_tensor(mask).detach().cpu().reshape(mask.shape[-2:]).numpy()
        if self.label_map:
            if plane.min() < 0 or plane.max() > 255:
                raise ValueError(f"class ids must lie in 0..255 for a PNG label map, got {plane.min()}..{plane.max()}")
            pixels = np.rint(plane).astype(np.uint8)
        else:
            pixels = ((plane > 0.5) * 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return atomic_write_bytes(path, buffer.getvalue())


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

"""3-D CT/MR datasets to 2-D training samples (PNG slice + binary mask per structure) and a MONAI datalist.

The datalist also lists the volumes of each split (``<split>_volumes``: {image, label} NIfTI paths), so evaluation
can predict every slice, re-assemble the volume with the input's affine and score 3-D Dice per volume.
"""

from __future__ import annotations

import logging
import os
import plistlib
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medsam_peft.transforms.io.array import LoadVolume, write_nifti
from medsam_peft.transforms.volume.array import AXES, foreground_slices
from medsam_peft.utils.atomic_io import write_json_atomic

logger = logging.getLogger(__name__)

DEFAULT_INVESALIUS = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
CT_WINDOW = (-500.0, 1000.0)  # SAM-PARSER's pre_CT.py HU clip


def to_uint8(volume: np.ndarray, window: tuple[float, float] | None = None,
             percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """CT: clip to the HU ``window`` and rescale to 0-255. MR (``window=None``): the non-zero voxels' percentiles."""
    if window is None:
        nonzero = volume[volume != 0]
        low, high = np.percentile(nonzero if nonzero.size else volume, percentiles)
    else:
        low, high = window
    if high <= low:
        raise ValueError(f"intensity window ({low}, {high}) is empty")
    return (np.clip((volume - low) / (high - low), 0, 1) * 255).round().astype(np.uint8)


def slice_to_image(plane: np.ndarray) -> np.ndarray:
    """Voxel (i, j) of a RAS slice -> image rows = j flipped (anterior/superior at the top), columns = i."""
    return np.ascontiguousarray(plane.T[::-1])


def image_to_slice(image: np.ndarray) -> np.ndarray:
    """Inverse of ``slice_to_image``: a 2-D image back to the slice's voxel order."""
    return np.ascontiguousarray(image[::-1].T)


def slice_cases(
    root: str | os.PathLike,
    cases: Sequence[Mapping[str, str]],
    splits: Mapping[str, str],
    label_names: Mapping[int, str],
    plane: str = "axial",
    window: tuple[float, float] | None = CT_WINDOW,
    min_pixels: int = 100,
    min_volume_voxels: int = 0,
    name: str = "volumes",
    note: str = "",
) -> dict[str, object]:
    """Write ``root/images`` and ``root/masks`` from 3-D ``cases``; return the datalist content (split lists,
    ``<split>_volumes`` lists and a ``meta`` with labels, plane and window) for the caller to adjust and write.

    Each case is ``{"case": id, "image": volume path, "label": volume path}``; ``splits`` maps case ids to
    ``training``/``validation``/``test``. A (slice, label) pair becomes a sample when the label has at least
    ``min_pixels`` pixels in that slice and ``min_volume_voxels`` in the volume (SAM-PARSER: 100 and 1000).
    """
    from PIL import Image

    if plane not in AXES:
        raise ValueError(f"plane must be one of {sorted(AXES)}, got {plane!r}")
    axis = AXES[plane]
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[dict[str, object]]] = {}
    loader = LoadVolume()
    for case in cases:
        split = splits[case["case"]]
        image = loader(case["image"])[0].numpy()
        label = np.rint(loader(case["label"])[0].numpy()).astype(np.int32)
        if image.shape != label.shape:
            raise ValueError(f"size mismatch: {case['image']} is {image.shape}, {case['label']} is {label.shape}")
        scaled = to_uint8(image, window)
        ids = [i for i in label_names if (label == i).sum() >= max(min_volume_voxels, 1)]
        lists.setdefault(f"{split}_volumes", []).append({"image": str(case["image"]), "label": str(case["label"]),
                                                         "case": case["case"]})
        written: set[int] = set()
        for z, label_id in foreground_slices(label, axis, min_pixels, ids):
            stem = f"{case['case']}_{plane}_{z:03d}"
            image_path = root / "images" / f"{stem}.png"
            if z not in written:
                Image.fromarray(slice_to_image(np.take(scaled, z, axis=axis))).save(image_path)
                written.add(z)
            mask_path = root / "masks" / f"{stem}_label{label_id:03d}.png"
            mask = slice_to_image((np.take(label, z, axis=axis) == label_id).astype(np.uint8) * 255)
            Image.fromarray(mask).save(mask_path)
            lists.setdefault(split, []).append({
                "image": str(image_path.relative_to(root)), "label": str(mask_path.relative_to(root)),
                "case": case["case"], "slice": z, "label_id": label_id, "structure": label_names[label_id],
                "plane": plane})
    meta = {"name": name, "plane": plane, "window": window, "min_pixels": min_pixels,
            "min_volume_voxels": min_volume_voxels, "labels": {int(k): v for k, v in label_names.items()},
            "note": note}
    return {**lists, "meta": meta}


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labelled, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labelled.ravel())[1:]
    return labelled == (1 + int(np.argmax(sizes)))


def read_invesalius_project(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Read an InVesalius ``.inv3`` project: HU volume (X, Y, Z), its masks by name, and a RAS affine."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; install the Debian package invesalius-examples "
                                "(apt-get install invesalius-examples) or pass --source pointing at Cranium.inv3")
    try:
        with tarfile.open(path, "r:gz") as tar:
            files = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            read = lambda n: tar.extractfile(files[n]).read()  # noqa: E731
            main = plistlib.loads(read("main.plist"))
            matrix = main["matrix"]
            zyx = np.frombuffer(read(matrix["filename"]), dtype=matrix["dtype"]).reshape(matrix["shape"])
            masks = {}
            for entry in main["masks"].values():
                info = plistlib.loads(read(entry))
                # InVesalius keeps one bookkeeping row/column/plane at index 0 of each axis
                raw = np.frombuffer(read(info["mask_file"]), dtype=np.uint8).reshape(info["mask_shape"])[1:, 1:, 1:]
                masks[f"threshold_{info['threshold_range'][0]}_{info['threshold_range'][1]}"] = raw.T > 127
    except (tarfile.TarError, KeyError, ValueError, EOFError) as err:
        raise ValueError(f"{path}: not a readable InVesalius project ({err})") from err
    spacing = [float(s) for s in main["spacing"]]
    affine = np.diag([spacing[0], spacing[1], spacing[2], 1.0])
    return zyx.T.astype(np.int16), masks, affine


def prepare_invesalius_ct(
    root: str | os.PathLike, source: str | os.PathLike | None = None, plane: str = "axial",
    min_pixels: int = 100, validation_fraction: float = 0.3,
) -> Path:
    """The InVesalius head CT (``invesalius-examples``): real HU, but its two masks are **thresholds**, not manual
    labels (bone [226, 3071] HU; soft tissue + bone [-142, 2986] HU). Labels: 1 = bone, 2 = soft tissue (the filled head outline minus
    bone), each from the largest connected component (drops the head-holder arc). One volume only: the upper
    ``validation_fraction`` of the axial slices is validation. Writes image.nii.gz / label.nii.gz and the slices.
    """
    from scipy import ndimage

    root = Path(root)
    hu, masks, affine = read_invesalius_project(source or DEFAULT_INVESALIUS)
    by_low = sorted(masks.items(), key=lambda kv: -int(kv[0].split("_")[1]))  # bone has the higher threshold
    bone = _largest_component(by_low[0][1])
    head = ndimage.binary_fill_holes(_largest_component(by_low[1][1]))
    label = np.where(bone, 1, np.where(head, 2, 0)).astype(np.uint8)
    image_path = write_nifti(hu, affine, root / "volumes" / "image.nii.gz", dtype=np.int16)
    label_path = write_nifti(label, affine, root / "volumes" / "label.nii.gz")
    data = slice_cases(root, [{"case": "cranium", "image": str(image_path), "label": str(label_path)}],
                       {"cranium": "training"}, {1: "bone", 2: "soft_tissue"}, plane=plane, window=CT_WINDOW,
                       min_pixels=min_pixels, name="invesalius_ct",
                       note="masks are HU thresholds from the InVesalius project, not manual labels")
    # one volume: split its samples by slice position
    depth = hu.shape[AXES[plane]]
    cut = int(round(depth * (1 - validation_fraction)))
    data["validation"] = [s for s in data["training"] if s["slice"] >= cut]
    data["training"] = [s for s in data["training"] if s["slice"] < cut]
    data["meta"]["split"] = f"slices < {cut} training, >= {cut} validation (one volume)"
    return write_json_atomic(root / "datalist.json", data)

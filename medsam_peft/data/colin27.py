"""Colin27 T1 MRI + AAL atlas labels (Debian package ``mricron-data``): real manual labels, available offline.

One subject (a 27-scan average in MNI space) with 116 hand-drawn AAL structures. Every (slice, structure) pair with
at least ``min_pixels`` foreground pixels becomes one 2-D sample: a grey PNG of the slice and a binary PNG of the
structure. Left-hemisphere structures (odd AAL ids) go to training, their right counterparts to validation: the
held-out set is other structures of the same subject, which is what this small offline set can honestly offer.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medsam_peft.data.volumes import slice_to_image, to_uint8
from medsam_peft.transforms.volume.array import AXES, foreground_slices
from medsam_peft.utils.atomic_io import write_json_atomic

DEFAULT_TEMPLATES_DIR = Path("/usr/share/mricron/templates")
# Subcortical AAL labels, whose boundaries are visible on T1 (reference offline-data note, section B1).
SUBCORTICAL = (37, 38, 41, 42, 71, 72, 73, 74, 75, 76, 77, 78)


def read_aal_names(templates_dir: Path) -> dict[int, str]:
    names = {}
    for line in (templates_dir / "aal.nii.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


def _load_pair(templates_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    missing = [f for f in ("ch2.nii.gz", "aal.nii.gz", "aal.nii.txt") if not (templates_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{templates_dir} lacks {missing}; install the Debian package mricron-data "
            "(apt-get install mricron-data) or pass --source pointing at a folder holding ch2.nii.gz and aal.nii.gz"
        )
    image_nii, label_nii = nib.load(templates_dir / "ch2.nii.gz"), nib.load(templates_dir / "aal.nii.gz")
    if image_nii.shape != label_nii.shape or not np.allclose(image_nii.affine, label_nii.affine):
        raise ValueError(f"{templates_dir}: ch2.nii.gz and aal.nii.gz are not on the same grid")
    return np.asarray(image_nii.dataobj, dtype=np.float32), np.asarray(label_nii.dataobj).astype(np.int32)


def colin27_pairs(
    labels: np.ndarray, structures: tuple[int, ...], axis: int, min_pixels: int, slice_step: int = 1
) -> list[tuple[int, int]]:
    """(slice index, structure id) pairs with at least ``min_pixels`` pixels, every ``slice_step``-th slice."""
    return [(z, s) for z, s in foreground_slices(labels, axis, min_pixels, structures) if z % slice_step == 0]


def prepare_colin27_aal(
    root: str | os.PathLike,
    source: str | os.PathLike | None = None,
    structures: tuple[int, ...] = SUBCORTICAL,
    plane: str = "axial",
    min_pixels: int = 50,
    slice_step: int = 1,
    multiclass: bool = False,
) -> Path:
    """Write PNG slices, masks and ``datalist.json`` (``training`` = left structures, ``validation`` = right).

    With ``multiclass=True`` each slice holding at least ``min_pixels`` of some structure becomes one sample whose
    mask carries class ids (0 background, i + 1 for ``structures[i]``); every 4th such slice is validation (the
    interleaved slices of one subject: a check of the multi-class machinery on real labels, not a benchmark).
    Returns the datalist path. Image intensities are scaled by the volume's 0.5-99.5 percentiles to 0-255.
    """
    from PIL import Image

    templates = Path(source) if source else DEFAULT_TEMPLATES_DIR
    if plane not in AXES:
        raise ValueError(f"plane must be one of {sorted(AXES)}, got {plane!r}")
    image, labels = _load_pair(templates)
    names = read_aal_names(templates)
    unknown = [s for s in structures if s not in names]
    if unknown:
        raise ValueError(f"AAL has no structure id(s) {unknown}; ids are 1..116 (see {templates / 'aal.nii.txt'})")
    axis = AXES[plane]
    scaled = to_uint8(image)  # the non-zero voxels' 0.5-99.5 percentiles to 0-255
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[dict[str, object]]] = {"training": [], "validation": []}
    if multiclass:
        return _write_multiclass(root, scaled, labels, structures, names, axis, plane, min_pixels, slice_step, templates)
    for z, structure in colin27_pairs(labels, structures, axis, min_pixels, slice_step):
        image_path = root / "images" / f"{plane}_{z:03d}.png"
        if not image_path.exists():
            Image.fromarray(slice_to_image(np.take(scaled, z, axis=axis))).save(image_path)
        mask_path = root / "masks" / f"{plane}_{z:03d}_aal{structure:03d}.png"
        mask = slice_to_image((np.take(labels, z, axis=axis) == structure).astype(np.uint8) * 255)
        Image.fromarray(mask).save(mask_path)
        split = "training" if structure % 2 == 1 else "validation"
        lists[split].append({"image": str(image_path.relative_to(root)), "label": str(mask_path.relative_to(root)),
                             "structure": names[structure], "slice": z, "plane": plane})
    datalist = root / "datalist.json"
    meta = {"name": "colin27_aal", "source": str(templates), "structures": {s: names[s] for s in structures},
            "min_pixels": min_pixels, "slice_step": slice_step,
            "note": "one subject; validation = right-hemisphere counterparts of the training structures"}
    return write_json_atomic(datalist, {**lists, "meta": meta})


def _write_multiclass(root: Path, scaled: np.ndarray, labels: np.ndarray, structures: tuple[int, ...],
                      names: dict[int, str], axis: int, plane: str, min_pixels: int, slice_step: int,
                      templates: Path) -> Path:
    from PIL import Image

    slices = sorted({z for z, _ in colin27_pairs(labels, structures, axis, min_pixels, slice_step)})
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.uint8)
    for index, structure in enumerate(structures):
        lookup[structure] = index + 1
    lists: dict[str, list[dict[str, object]]] = {"training": [], "validation": []}
    for position, z in enumerate(slices):
        image_path = root / "images" / f"{plane}_{z:03d}.png"
        if not image_path.exists():
            Image.fromarray(slice_to_image(np.take(scaled, z, axis=axis))).save(image_path)
        mask_path = root / "masks" / f"{plane}_{z:03d}_classes.png"
        Image.fromarray(slice_to_image(lookup[np.take(labels, z, axis=axis)])).save(mask_path)
        split = "validation" if position % 4 == 3 else "training"
        lists[split].append({"image": str(image_path.relative_to(root)), "label": str(mask_path.relative_to(root)),
                             "slice": z, "plane": plane})
    classes = ["background"] + [names[s] for s in structures]
    meta = {"name": "colin27_aal_multiclass", "source": str(templates), "classes": classes, "min_pixels": min_pixels,
            "slice_step": slice_step, "note": "one subject; validation = every 4th slice holding a structure"}
    return write_json_atomic(root / "datalist.json", {**lists, "meta": meta})

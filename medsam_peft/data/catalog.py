"""The seed papers' datasets: where to get them, how to verify them, and how to turn them into one datalist format.

``prepare_dataset(name, root)`` downloads the official archives (resumable, verified), extracts them under
``root/raw`` and writes ``root/datalist.json`` with ``training`` / ``validation`` / ``test`` lists of
``{"image", "label"}`` paths relative to ``root``. Masks are rewritten as {0, 255} PNGs under ``root/masks`` when
the originals are JPEG (lossy: thresholded at 127), TIFF, colour or per-instance, so every bundle reads every
dataset the same way. Datasets behind a registration or a file-sharing link take ``source=`` (``--source DIR``):
the folder holding the user's downloaded archives or their extracted contents.

Checksums: MD5/SHA-256 are given where the publisher (or a long-standing loader such as torchvision) publishes
them. Where none is published, the SHA-256 of the first download is recorded in ``root/downloads/checksums.json``
and every later use is verified against it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsam_peft.errors import MedsamPeftError, UnknownNameError
from medsam_peft.utils.atomic_io import write_json_atomic
from medsam_peft.utils.download import DownloadError, download_file, file_digest

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
Lists = dict[str, list[dict[str, object]]]


class DatasetUnavailable(MedsamPeftError, RuntimeError):
    """The dataset cannot be fetched automatically (registration, share link) or is not where it was expected."""


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str | None = None
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    homepage: str
    task: str  # "binary", "instances", "volumes", "multiclass"
    layout: Callable[[Path, Path, int], Lists]
    archives: tuple[Archive, ...] = ()
    registration: str | None = None  # how to obtain it when it cannot be downloaded automatically
    split: str = ""
    seeds: tuple[str, ...] = field(default=())  # which paper evaluates on it
    modality: str = "photograph"  # what the images are, for an exported bundle's metadata
    source_format: str = "png"  # MONAI model-zoo ``data_type`` of the raw data ("nibabel" for NIfTI volumes)


# ---------------------------------------------------------------------------------------------------------------
# helpers shared by the layouts


def _find_dir(raw: Path, *names: str) -> Path:
    """The first folder under ``raw`` (any depth) whose relative path ends with one of ``names``."""
    for name in names:
        parts = Path(name).parts
        for candidate in sorted(raw.rglob(parts[-1])):
            if candidate.is_dir() and candidate.parts[-len(parts):] == parts:
                return candidate
    raise DatasetUnavailable(f"{raw}: no folder named {' or '.join(names)}; is this the right archive/--source?")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _binary_png(src: Path, dest: Path, threshold: float = 127) -> None:
    """Rewrite any gray/colour/JPEG/TIFF mask as a {0, 255} PNG (foreground = value > threshold in any channel)."""
    from PIL import Image

    dest.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as img:
        array = np.asarray(img.convert("L") if img.mode not in ("I;16", "I", "F") else img)
    Image.fromarray(((array > threshold) * 255).astype(np.uint8)).save(dest)


def _pair_by_stem(images: Sequence[Path], masks: Sequence[Path], suffix: str = "") -> list[tuple[Path, Path]]:
    by_stem = {m.stem: m for m in masks}
    pairs, unmatched = [], []
    for image in images:
        mask = by_stem.get(image.stem + suffix)
        (pairs.append((image, mask)) if mask else unmatched.append(image.name))
    if unmatched:
        logger.warning("%d images have no mask and are skipped (e.g. %s)", len(unmatched), unmatched[:3])
    if not pairs:
        raise DatasetUnavailable(f"no image/mask pairs matched between {images[:1]} and {masks[:1]}")
    return pairs


def _entries(pairs: Sequence[tuple[Path, Path]], out: Path, convert: bool) -> list[dict[str, object]]:
    """Datalist entries relative to ``out``; masks with no foreground are skipped (no box can be drawn) and
    counted in the log, naming the first few."""
    from PIL import Image

    entries, empty = [], []
    for image, mask in pairs:
        if convert:
            dest = out / "masks" / mask.relative_to(out / "raw").with_suffix(".png")
            if not dest.exists():
                _binary_png(mask, dest)
            mask = dest
        with Image.open(mask) as img:
            if not np.asarray(img).any():
                empty.append(str(mask))
                continue
        entries.append({"image": str(image.relative_to(out)), "label": str(mask.relative_to(out))})
    if empty:
        logger.warning("skipped %d samples whose mask is empty (no box can be drawn), e.g. %s", len(empty), empty[:3])
    return entries


def _seeded_split(items: list, seed: int, test: int | float = 0, validation: int | float = 0.1) -> Lists:
    """Shuffle with ``seed``; take ``test`` then ``validation`` items (counts, or fractions of what is left)."""
    items = list(items)
    random.Random(seed).shuffle(items)
    n_test = test if isinstance(test, int) else round(len(items) * test)
    rest = items[n_test:]
    n_val = validation if isinstance(validation, int) else round(len(rest) * validation)
    return {"training": rest[n_val:], "validation": rest[:n_val], "test": items[:n_test]}


# ---------------------------------------------------------------------------------------------------------------
# layouts: (raw folder, output root, seed) -> lists


def _kvasir(raw: Path, out: Path, seed: int) -> Lists:
    base = _find_dir(raw, "Kvasir-SEG")
    pairs = _pair_by_stem(_images(base / "images"), _images(base / "masks"))
    # PraNet protocol: 100 test images; our validation is 10% of the rest (the reference's val.csv is unpublished)
    split = _seeded_split(pairs, seed, test=min(100, len(pairs) // 10), validation=0.1)
    return {k: _entries(v, out, convert=True) for k, v in split.items()}


def _cvc_clinicdb(raw: Path, out: Path, seed: int) -> Lists:
    images = _find_dir(raw, "Original")
    masks = _find_dir(raw, "Ground Truth", "GroundTruth", "Ground_Truth")
    pairs = _pair_by_stem(_images(images), _images(masks))
    split = _seeded_split(pairs, seed, test=min(62, len(pairs) // 10), validation=0.1)  # PraNet: 62 test images
    return {k: _entries(v, out, convert=True) for k, v in split.items()}


def _isic2017(raw: Path, out: Path, seed: int) -> Lists:
    lists: Lists = {}
    for split, stem in (("training", "Training"), ("validation", "Validation"), ("test", "Test_v2")):
        images = [p for p in _images(_find_dir(raw, f"ISIC-2017_{stem}_Data")) if p.suffix.lower() == ".jpg"]
        masks = _images(_find_dir(raw, f"ISIC-2017_{stem}_Part1_GroundTruth"))
        lists[split] = _entries(_pair_by_stem(images, masks, "_segmentation"), out, convert=False)
    return lists


def _sbu(raw: Path, out: Path, seed: int) -> Lists:
    def pairs(folder: Path) -> list[tuple[Path, Path]]:
        return _pair_by_stem(_images(folder / "ShadowImages"), _images(folder / "ShadowMasks"))

    train = _find_dir(raw, "SBUTrain4KRecoveredSmall")
    split = _seeded_split(pairs(train), seed, test=0, validation=0.05)
    split["test"] = pairs(_find_dir(raw, "SBU-Test"))
    return {k: _entries(v, out, convert=True) for k, v in split.items()}


def _massachusetts_roads(raw: Path, out: Path, seed: int) -> Lists:
    lists: Lists = {}
    for split, folder in (("training", "train"), ("validation", "val"), ("test", "test")):
        pairs = _pair_by_stem(_images(_find_dir(raw, folder)), _images(_find_dir(raw, f"{folder}_labels")))
        lists[split] = _entries(pairs, out, convert=True)
    return lists


def _paired_folders(raw: Path, out: Path, seed: int) -> Lists:
    """Generic layout for datasets distributed through share links: ``[split/]images`` + ``[split/]masks``
    (or ``labels``/``GT``), masks named like their images. Without split folders: seeded 80/10/10."""
    splits = {"training": ("train", "training", "Train"), "validation": ("val", "validation", "Val"),
              "test": ("test", "testing", "Test")}
    lists: Lists = {}
    for split, names in splits.items():
        for name in names:
            folder = raw / name
            if folder.is_dir():
                image_dir = next((folder / n for n in ("images", "image", "Images", "Imgs") if (folder / n).is_dir()),
                                 None)
                mask_dir = next((folder / n for n in ("masks", "labels", "label", "GT", "Masks")
                                 if (folder / n).is_dir()), None)
                if image_dir and mask_dir:
                    lists[split] = _entries(_pair_by_stem(_images(image_dir), _images(mask_dir)), out, convert=True)
                    break
    if lists:
        return lists
    image_dir = _find_dir(raw, "images", "Images", "Imgs")
    mask_dir = _find_dir(raw, "masks", "labels", "GT", "Masks")
    split = _seeded_split(_pair_by_stem(_images(image_dir), _images(mask_dir)), seed, test=0.1, validation=0.1)
    return {k: _entries(v, out, convert=True) for k, v in split.items()}


def _voc2012(raw: Path, out: Path, seed: int) -> Lists:
    """One sample per object instance (SegmentationObject ids); VOC's 255 boundary band is dropped from the mask."""
    from PIL import Image

    voc = _find_dir(raw, "VOC2012")
    lists: Lists = {}
    for split, listname in (("training", "train"), ("validation", "val")):
        ids = (voc / "ImageSets" / "Segmentation" / f"{listname}.txt").read_text().split()
        entries = []
        for image_id in ids:
            with Image.open(voc / "SegmentationObject" / f"{image_id}.png") as img:
                objects = np.asarray(img)
            for instance in (v for v in np.unique(objects) if v not in (0, 255)):
                dest = out / "masks" / "voc2012" / f"{image_id}_{instance:03d}.png"
                if not dest.exists():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(((objects == instance) * 255).astype(np.uint8)).save(dest)
                entries.append({"image": str((voc / "JPEGImages" / f"{image_id}.jpg").relative_to(out)),
                                "label": str(dest.relative_to(out)), "instance": int(instance)})
        lists[split] = entries
    return lists


def coco_instances(annotation_file: Path, image_dir: Path, out: Path, tag: str, min_area: float = 0.0
                   ) -> list[dict[str, object]]:
    """One sample per polygon instance of a COCO-format annotation file (COCO, NWPU VHR-10 instance masks).
    Crowd (RLE) regions are skipped and counted: they mark groups, not instances."""
    from PIL import Image, ImageDraw

    coco = json.loads(annotation_file.read_text())
    images = {im["id"]: im for im in coco["images"]}
    entries, crowd = [], 0
    for ann in coco["annotations"]:
        if ann.get("iscrowd") or not isinstance(ann.get("segmentation"), list):
            crowd += 1
            continue
        if ann.get("area", 1) < min_area:
            continue
        info = images[ann["image_id"]]
        dest = out / "masks" / tag / f"{Path(info['file_name']).stem}_{ann['id']}.png"
        if not dest.exists():
            canvas = Image.new("L", (info["width"], info["height"]), 0)
            for polygon in ann["segmentation"]:
                ImageDraw.Draw(canvas).polygon([float(v) for v in polygon], fill=255)
            dest.parent.mkdir(parents=True, exist_ok=True)
            canvas.save(dest)
        entries.append({"image": str((image_dir / info["file_name"]).relative_to(out)),
                        "label": str(dest.relative_to(out)), "category_id": ann["category_id"]})
    if crowd:
        logger.info("%s: skipped %d crowd/RLE annotations", annotation_file, crowd)
    return entries


def _coco2017(raw: Path, out: Path, seed: int) -> Lists:
    annotations = _find_dir(raw, "annotations")
    return {split: coco_instances(annotations / f"instances_{name}2017.json", _find_dir(raw, f"{name}2017"), out,
                                  f"coco_{name}")
            for split, name in (("training", "train"), ("validation", "val"))
            if (annotations / f"instances_{name}2017.json").is_file()}


def _nwpu_vhr10(raw: Path, out: Path, seed: int) -> Lists:
    annotation = next(iter(sorted(raw.rglob("*.json"))), None)
    if annotation is None:
        raise DatasetUnavailable(f"{raw}: NWPU VHR-10 needs its COCO-format instance annotations (*.json)")
    image_dir = _find_dir(raw, "positive image set", "positive_image_set", "images")
    entries = coco_instances(annotation, image_dir, out, "nwpu")
    by_image: dict[str, list] = {}
    for entry in entries:
        by_image.setdefault(str(entry["image"]), []).append(entry)
    split = _seeded_split(sorted(by_image), seed, test=0.2, validation=0.1)  # split by image, not by instance
    return {k: [e for image in v for e in by_image[image]] for k, v in split.items()}


def _abdomen_ct(raw: Path, out: Path, seed: int) -> Lists:
    """NIfTI pairs (``*_0000.nii.gz`` images, labels with the case name); patient-level 80/20 split, seed 2023,
    HU window [-500, 1000], >= 100 pixels per slice and >= 1000 voxels per volume (SAM-PARSER's pre_CT.py)."""
    from medsam_peft.data.volumes import slice_cases

    labels = {p.name[: -len(".nii.gz")]: p for p in raw.rglob("*.nii.gz") if not p.name.endswith("_0000.nii.gz")}
    cases = []
    for image in sorted(raw.rglob("*_0000.nii.gz")):
        case = image.name.replace("_0000.nii.gz", "")
        if case in labels:
            cases.append({"case": case, "image": str(image), "label": str(labels[case])})
    if not cases:
        raise DatasetUnavailable(f"{raw}: no <case>_0000.nii.gz images with matching <case>.nii.gz labels")
    ids = [c["case"] for c in cases]
    random.Random(2023).shuffle(ids)
    n_test = max(1, round(0.2 * len(ids))) if len(ids) > 1 else 0
    splits = {case: ("test" if i < n_test else "training") for i, case in enumerate(ids)}
    names = {1: "liver", 2: "kidney", 3: "spleen", 4: "pancreas"}  # AbdomenCT-1K label ids
    # keeps slice_cases' meta (labels, plane, window): configs/evaluate_volumes.json reads it
    return slice_cases(out, cases, splits, names, window=(-500.0, 1000.0), min_pixels=100, min_volume_voxels=1000,
                       name="abdomenct1k")


# Trans10K-v2 categories in the order of the Conv-LoRA paper's table (class id = position; 0 = background).
TRANS10K_CLASSES = ("background", "shelf", "jar", "freezer", "window", "door", "eyeglass", "cup", "wall", "bowl",
                    "bottle", "box")


def _class_id_mask(path: Path, num_classes: int) -> None:
    """Refuse masks that are not single-channel class-id maps (ids < num_classes, 255 = ignore)."""
    from PIL import Image

    with Image.open(path) as img:
        if img.mode not in ("L", "P", "I", "I;16"):
            raise DatasetUnavailable(
                f"{path}: a {img.mode} mask; Trans10K-v2 is read as single-channel class-id PNGs (values 0..11, the "
                "layout of the release the Conv-LoRA code trains on, train/images + train/masks_12/<name>_mask.png). "
                "Convert colour-coded masks to class ids first")
        values = np.unique(np.asarray(img))
    bad = [int(v) for v in values if v >= num_classes and v != 255]
    if bad:
        raise DatasetUnavailable(f"{path}: class ids {bad} outside 0..{num_classes - 1} (255 = ignore)")


def _trans10k(raw: Path, out: Path, seed: int) -> Lists:
    lists: Lists = {}
    for split, names in (("training", ("train",)), ("validation", ("validation", "val")), ("test", ("test",))):
        try:
            folder = _find_dir(raw, *names)
        except DatasetUnavailable:
            continue
        pairs = _pair_by_stem(_images(folder / "images"), _images(_find_dir(folder, "masks_12")), "_mask")
        for _, mask in pairs:
            _class_id_mask(mask, len(TRANS10K_CLASSES))
        lists[split] = [{"image": str(i.relative_to(out)), "label": str(m.relative_to(out))} for i, m in pairs]
    if "training" not in lists:
        raise DatasetUnavailable(f"{raw}: no train/images + train/masks_12 folders (Trans10K-v2 layout)")
    return {**lists, "meta": {"name": "trans10k", "classes": list(TRANS10K_CLASSES)}}


_SIMULA = "https://datasets.simula.no/downloads"
_ISIC = "https://isic-challenge-data.s3.amazonaws.com/2017"
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("kvasir", "Kvasir-SEG", "https://datasets.simula.no/kvasir-seg/", "binary", _kvasir,
                (Archive(f"{_SIMULA}/kvasir-seg.zip"),),
                split="1,000 images: seeded 100 test (PraNet size), 10% of the rest validation", seeds=("conv_lora",),
                modality="endoscopy", source_format="jpg"),
    DatasetSpec("cvc_clinicdb", "CVC-ClinicDB (CVC-612)", "https://polyp.grand-challenge.org/CVCClinicDB/", "binary",
                _cvc_clinicdb, registration="request it from the CVC-ClinicDB page (Original/ and Ground Truth/ TIFFs)",
                split="612 images: seeded 62 test (PraNet size), 10% of the rest validation", seeds=("conv_lora",),
                modality="endoscopy", source_format="tiff"),
    DatasetSpec("isic2017", "ISIC 2017 Part 1", "https://challenge.isic-archive.com/data/#2017", "binary", _isic2017,
                tuple(Archive(f"{_ISIC}/ISIC-2017_{s}.zip") for s in (
                    "Training_Data", "Training_Part1_GroundTruth", "Validation_Data", "Validation_Part1_GroundTruth",
                    "Test_v2_Data", "Test_v2_Part1_GroundTruth")),
                split="official 2,000 / 150 / 600", seeds=("conv_lora",),
                modality="dermoscopy", source_format="jpg"),
    DatasetSpec("camo", "CAMO (camouflaged objects)", "https://sites.google.com/view/ltnghia/research/camo", "binary",
                _paired_folders, registration="download CAMO-V.1.0 from the project page (Google Drive link)",
                split="official 1,000 train / 250 test when given as folders", seeds=("conv_lora",),
                modality="photograph", source_format="jpg"),
    DatasetSpec("sbu", "SBU-shadow", "https://www3.cs.stonybrook.edu/~cvl/projects/shadow_noisy_label/", "binary",
                _sbu, (Archive("https://www3.cs.stonybrook.edu/~cvl/content/datasets/shadow_db/SBU-shadow.zip"),),
                split="official 4,089 train (5% seeded validation) / 638 test", seeds=("conv_lora",),
                modality="photograph", source_format="jpg"),
    DatasetSpec("leaf", "Leaf disease segmentation", "https://www.kaggle.com/datasets/fakhrealam9537/"
                "leaf-disease-segmentation-dataset", "binary", _paired_folders,
                registration="download it from Kaggle (account needed)", split="its train/test folders",
                seeds=("conv_lora",),
                modality="photograph", source_format="jpg"),
    DatasetSpec("road", "Massachusetts Roads", "https://www.cs.toronto.edu/~vmnih/data/", "binary",
                _massachusetts_roads, registration="download the 1500x1500 tiles (Kaggle mirror: balraj98/"
                "massachusetts-roads-dataset, folders train/ train_labels/ val/ val_labels/ test/ test_labels/)",
                split="official 1,108 / 14 / 49", seeds=("conv_lora",),
                modality="aerial imagery", source_format="tiff"),
    DatasetSpec("abdomenct", "AbdomenCT-1K (or FLARE22)", "https://github.com/JunMa11/AbdomenCT-1K", "volumes",
                _abdomen_ct, registration="download the CT volumes and masks from the AbdomenCT-1K page",
                split="patient-level 80/20, seed 2023 (SAM-PARSER)", seeds=("sam_parser",),
                modality="CT", source_format="nibabel"),
    DatasetSpec("coco2017", "COCO 2017 instances", "https://cocodataset.org/#download", "instances", _coco2017,
                (Archive("http://images.cocodataset.org/zips/train2017.zip"),
                 Archive("http://images.cocodataset.org/zips/val2017.zip"),
                 Archive("http://images.cocodataset.org/annotations/annotations_trainval2017.zip")),
                split="official train2017 / val2017, one sample per polygon instance", seeds=("sam_parser",),
                modality="photograph", source_format="jpg"),
    DatasetSpec("voc2012", "PASCAL VOC 2012", "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/", "instances",
                _voc2012, (Archive("https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                                   md5="6cd6e144f989b92b3379bac3b3de84fd"),),
                split="official segmentation train / val, one sample per object", seeds=("sam_parser",),
                modality="photograph", source_format="jpg"),
    DatasetSpec("nwpu", "NWPU VHR-10 (instance masks)", "https://github.com/chaozhong2010/VHR-10_dataset_coco",
                "instances", _nwpu_vhr10, registration="download NWPU VHR-10 with its COCO-format instance masks",
                split="seeded by image 70/10/20", seeds=("sam_parser",),
                modality="aerial imagery", source_format="jpg"),
    DatasetSpec("whu", "WHU building (aerial)", "http://gpcv.whu.edu.cn/data/building_dataset.html", "binary",
                _paired_folders, registration="download the aerial imagery dataset from the WHU page",
                split="official train / val / test folders", seeds=("sam_parser",),
                modality="aerial imagery", source_format="tiff"),
    DatasetSpec("trans10k", "Trans10K-v2", "https://xieenze.github.io/projects/TransLAB/TransLAB.html", "multiclass",
                _trans10k, registration="download Trans10K-v2 from the project page (Google Drive); masks_12 must hold "
                "class-id PNGs (0..11)",
                split="official 5,000 / 1,000 / 4,428", seeds=("conv_lora",),
                modality="photograph", source_format="jpg"),
)}


# The offline datasets (prepared by data/colin27.py and data/volumes.py): (modality, raw format).
OFFLINE_DATASETS = {"colin27_aal": ("MR (T1)", "nibabel"), "colin27_aal_multiclass": ("MR (T1)", "nibabel"),
                    "invesalius_ct": ("CT", "nibabel")}


def dataset_modality(name: str) -> tuple[str, str]:
    """(modality, model-zoo data_type of the raw data) of a dataset by name; ("unknown", "png") for user data."""
    if name in DATASETS:
        return DATASETS[name].modality, DATASETS[name].source_format
    return OFFLINE_DATASETS.get(name, ("unknown", "png"))


# ---------------------------------------------------------------------------------------------------------------


def _extract(archive: Path, dest: Path) -> None:
    marker = dest / f".extracted-{archive.name}"
    if marker.exists():
        return
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                tf.extractall(dest, filter="data")
        else:
            raise DatasetUnavailable(f"{archive}: neither a zip nor a tar archive; delete it and download again")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        raise DatasetUnavailable(f"{archive}: damaged archive ({err}); delete it and download again") from err
    marker.touch()


def _verified_download(archive: Archive, downloads: Path, mirror: str | None) -> Path:
    url = f"{mirror.rstrip('/')}/{archive.filename}" if mirror else archive.url
    record_file = downloads / "checksums.json"
    recorded = json.loads(record_file.read_text()) if record_file.exists() else {}
    sha256 = archive.sha256 or recorded.get(archive.filename)
    path = download_file(url, downloads / archive.filename, sha256=sha256, md5=archive.md5)
    if archive.sha256 is None and archive.md5 is None and archive.filename not in recorded:
        recorded[archive.filename] = file_digest(path)
        write_json_atomic(record_file, recorded)
        logger.warning("%s: the publisher gives no checksum; recorded sha256 %s in %s for later verification",
                       archive.filename, recorded[archive.filename], record_file)
    return path


def prepare_dataset(name: str, root: str | os.PathLike, source: str | os.PathLike | None = None, seed: int = 0,
                    mirror: str | None = None) -> Path:
    """Fetch (or take from ``source``), verify, extract and index dataset ``name``; returns the datalist path.

    ``mirror`` replaces the publisher's host with another base URL serving the same file names (an institutional
    mirror, or a local server in tests).
    """
    if name not in DATASETS:
        raise UnknownNameError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}, colin27_aal, invesalius_ct")
    spec = DATASETS[name]
    root = Path(root).resolve()
    raw = root / "raw"
    if source is not None:
        source = Path(source)
        if not source.exists():
            raise DatasetUnavailable(f"--source {source} does not exist")
        archives = [p for p in source.iterdir() if p.is_file() and (zipfile.is_zipfile(p) or tarfile.is_tarfile(p))]
        if archives:
            for archive in archives:
                _extract(archive, raw)
        elif not raw.exists():
            root.mkdir(parents=True, exist_ok=True)
            raw.symlink_to(source.resolve(), target_is_directory=True)  # no copy; datalist paths stay under root
    elif spec.registration:
        raise DatasetUnavailable(
            f"{spec.title} cannot be downloaded automatically: {spec.registration} ({spec.homepage}). Then run "
            f"`medsam-peft prepare {name} --root {root} --source DIR` with DIR holding the archives or their contents"
        )
    else:
        downloads = root / "downloads"
        for archive in spec.archives:
            try:
                path = _verified_download(archive, downloads, mirror)
            except DownloadError as err:
                raise DatasetUnavailable(f"{spec.title}: {err}") from err
            _extract(path, raw)
    lists = spec.layout(raw, root, seed)
    layout_meta = lists.pop("meta", {})
    datalist = root / "datalist.json"
    meta = {**layout_meta, "name": name, "title": spec.title, "homepage": spec.homepage, "task": spec.task, "split": spec.split,
            "seed": seed, "counts": {k: len(v) for k, v in lists.items()}}
    return write_json_atomic(datalist, {**lists, "meta": meta})

"""A corpus of bad inputs built in the test, one case each: clear error naming the file, or a counted skip."""

from __future__ import annotations

import gzip
import json
import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medsam_peft.data import prepare_dataset
from medsam_peft.transforms import (
    ImageReadError,
    LoadImage2D,
    LoadImageMaskd,
    LoadMask2D,
    LoadVolume,
    LoadVolumed,
    RandBoxFromMaskd,
)


@pytest.fixture()
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    files = {}
    good = rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)
    Image.fromarray(good).save(files.setdefault("image", tmp_path / "image.png"))
    mask = np.zeros((32, 40), np.uint8)
    mask[8:20, 10:30] = 255
    Image.fromarray(mask).save(files.setdefault("mask", tmp_path / "mask.png"))
    Image.fromarray(mask[:, :30]).save(files.setdefault("small_mask", tmp_path / "small_mask.png"))
    Image.fromarray(np.zeros_like(mask)).save(files.setdefault("empty_mask", tmp_path / "empty_mask.png"))
    Image.fromarray((mask // 255 * 7).astype(np.uint8)).save(files.setdefault("ids_mask", tmp_path / "ids_mask.png"))
    data = files["image"].read_bytes()
    files.setdefault("truncated", tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    files.setdefault("not_image", tmp_path / "notes.png").write_text("not an image")
    volume = rng.normal(size=(6, 7, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), files.setdefault("volume", tmp_path / "volume.nii.gz"))
    nan_volume = volume.copy()
    nan_volume[1, 2, 3] = np.nan
    nan_volume[2, 2, 2] = np.inf
    nib.save(nib.Nifti1Image(nan_volume, np.eye(4)), files.setdefault("nan_volume", tmp_path / "nan.nii.gz"))
    nib.save(nib.Nifti1Image(rng.normal(size=(6, 7, 8, 3)).astype(np.float32), np.eye(4)),
             files.setdefault("4d_volume", tmp_path / "4d.nii.gz"))
    nib.save(nib.Nifti1Image(volume[..., None], np.eye(4)), files.setdefault("4d_single", tmp_path / "4d1.nii.gz"))
    raw = gzip.decompress(files["volume"].read_bytes())
    files.setdefault("truncated_volume", tmp_path / "cut.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 9), np.uint8), np.eye(4)), files.setdefault("label_9", tmp_path / "l9.nii.gz"))
    return files


def test_truncated_and_non_image_files_name_the_file(corpus) -> None:
    for key in ("truncated", "not_image"):
        with pytest.raises(ImageReadError, match=f"{corpus[key]}: unreadable or truncated"):
            LoadImage2D()(corpus[key])


def test_missing_file_in_a_datalist_names_it(corpus, tmp_path) -> None:
    with pytest.raises(ImageReadError, match=f"{tmp_path / 'gone.png'}: file not found.*datalist"):
        LoadImageMaskd()({"image": str(tmp_path / "gone.png"), "label": str(corpus["mask"])})
    with pytest.raises(KeyError, match="no 'label' key"):
        LoadImageMaskd()({"image": str(corpus["image"])})


def test_image_mask_size_mismatch_names_both(corpus) -> None:
    with pytest.raises(ImageReadError, match=r"size mismatch: image .*image.png is \(32, 40\) but mask "
                                             r".*small_mask.png is \(32, 30\)"):
        LoadImageMaskd()({"image": str(corpus["image"]), "label": str(corpus["small_mask"])})


def test_non_binary_mask_where_binary_is_expected(corpus) -> None:
    with pytest.raises(ImageReadError, match=r"ids_mask.png: binary mask expected .* found values 0, 7"):
        LoadMask2D("binary")(corpus["ids_mask"])
    ids = LoadMask2D("multiclass")(corpus["ids_mask"])
    assert set(torch.unique(ids).tolist()) == {0, 7} and int((ids == 7).sum()) == 12 * 20


def test_empty_mask_is_a_counted_skip_in_training_and_in_prepare(corpus, tmp_path, caplog) -> None:
    boxer = RandBoxFromMaskd(max_jitter=0)
    sample = LoadImageMaskd()({"image": str(corpus["image"]), "label": str(corpus["empty_mask"])})
    with caplog.at_level(logging.WARNING):
        out = boxer(sample)
    assert boxer.empty_count == 1 and "empty_mask.png" in caplog.text
    assert out["box"].tolist() == [0.0, 0.0, 39.0, 31.0]  # whole image: the step runs, the count tells
    source = tmp_path / "user_copy"
    for split in ("train", "test"):
        (source / split / "images").mkdir(parents=True)
        (source / split / "masks").mkdir(parents=True)
        for name, mask in (("a", "mask"), ("b", "empty_mask"), ("c", "mask")):
            Image.open(corpus["image"]).save(source / split / "images" / f"{name}.png")
            Image.open(corpus[mask]).save(source / split / "masks" / f"{name}.png")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        data = json.loads(prepare_dataset("camo", tmp_path / "camo", source=source).read_text())
    assert len(data["training"]) == 2 and len(data["test"]) == 2
    assert "skipped 1 samples whose mask is empty" in caplog.text and "b.png" in caplog.text


def test_nan_and_inf_voxels(corpus) -> None:
    with pytest.raises(ImageReadError, match=f"{corpus['nan_volume']}: 2 NaN/Inf voxels"):
        LoadVolume()(corpus["nan_volume"])
    fixed = LoadVolume(nan_to=0.0)(corpus["nan_volume"])
    assert torch.isfinite(fixed).all() and float(fixed[0, 1, 2, 3]) == 0.0


def test_4d_volumes(corpus) -> None:
    with pytest.raises(ImageReadError, match=r"4d.nii.gz: expected a 3-D volume, got shape \(6, 7, 8, 3\)"):
        LoadVolume()(corpus["4d_volume"])
    single = LoadVolume()(corpus["4d_single"])  # a trailing length-1 axis is just a 3-D volume
    assert torch.equal(single, LoadVolume()(corpus["volume"]))


def test_truncated_volume_and_grid_mismatch(corpus) -> None:
    with pytest.raises(ImageReadError, match="cut.nii.gz: unreadable NIfTI"):
        LoadVolume()(corpus["truncated_volume"])
    with pytest.raises(ImageReadError, match=r"size mismatch: .*volume.nii.gz is \(6, 7, 8\) but .*l9.nii.gz"):
        LoadVolumed(["image", "label"])({"image": str(corpus["volume"]), "label": str(corpus["label_9"])})

"""Readers (16-bit/RGBA/palette 2-D, NIfTI/MHA/NRRD/DICOM 3-D with geometry) and 3-D <-> 2-D on real volumes."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from medsam_peft.data import prepare_invesalius_ct, read_invesalius_project
from medsam_peft.data.volumes import DEFAULT_INVESALIUS
from medsam_peft.transforms import (
    AssembleVolume,
    LoadImage2D,
    LoadVolume,
    LoadVolumed,
    RandPointsFromMaskd,
    SliceVolumed,
    write_nifti,
)
from tests.conftest import COLIN27_DIR


def test_2d_formats_become_three_channel_floats(tmp_path) -> None:
    gray16 = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 97).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.tif")
    rgba = np.dstack([np.full((20, 30), v, np.uint8) for v in (10, 20, 30, 0)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    loaded16 = LoadImage2D()(tmp_path / "g16.tif")
    assert loaded16.shape == (3, 20, 30) and torch.equal(loaded16[2], torch.from_numpy(gray16.astype(np.float32)))
    loaded_rgba = LoadImage2D()(tmp_path / "rgba.png")  # alpha dropped, colour kept (not premultiplied)
    assert loaded_rgba[:, 5, 5].tolist() == [10.0, 20.0, 30.0]
    assert loaded16.meta["filename_or_obj"] == str(tmp_path / "g16.tif")


@pytest.fixture(scope="module")
def colin27():
    image = nib.load(COLIN27_DIR / "ch2.nii.gz")
    label = nib.load(COLIN27_DIR / "aal.nii.gz")
    return image, np.asarray(label.dataobj).astype(np.int32)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_formats_read_like_nifti_with_the_same_affine(colin27, tmp_path, suffix) -> None:
    nifti = LoadVolume()(COLIN27_DIR / "ch2.nii.gz")
    itk = sitk.ReadImage(str(COLIN27_DIR / "ch2.nii.gz"))  # SimpleITK converts the RAS affine to LPS geometry
    sitk.WriteImage(itk, str(tmp_path / f"ch2{suffix}"))
    other = LoadVolume()(tmp_path / f"ch2{suffix}")
    assert torch.equal(other, nifti)
    np.testing.assert_allclose(other.affine.numpy(), colin27[0].affine, atol=1e-4)
    np.testing.assert_allclose(other.meta["spacing"], [1.0, 1.0, 1.0], atol=1e-6)


def test_dicom_series_folder(tmp_path) -> None:
    volume = (np.arange(4 * 5 * 6).reshape(6, 5, 4) * 10).astype(np.int16)  # (z, y, x)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    folder = tmp_path / "series"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(volume.shape[0]):
        plane = image[:, :, z]
        plane.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, z))))
        plane.SetMetaData("0020|0013", str(z + 1))
        plane.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")
        plane.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        plane.SetMetaData("0018|0050", "2.5")
        writer.SetFileName(str(folder / f"{z:03d}.dcm"))
        writer.Execute(plane)
    loaded = LoadVolume()(folder)
    assert torch.equal(loaded[0], torch.from_numpy(volume.transpose(2, 1, 0).astype(np.float32)))
    np.testing.assert_allclose(loaded.meta["spacing"], [0.8, 0.9, 2.5], atol=1e-4)
    np.testing.assert_allclose(loaded.affine[:3, 3].numpy(), [-10.0, 20.0, 30.0], atol=1e-4)  # LPS -> RAS


def test_training_slices_one_per_slice_and_label_with_enough_pixels(colin27) -> None:
    _, labels = colin27
    ids, min_pixels = (37, 41, 77), 40
    volumes = LoadVolumed(["image", "label"])({"image": str(COLIN27_DIR / "ch2.nii.gz"),
                                               "label": str(COLIN27_DIR / "aal.nii.gz")})
    samples = SliceVolumed(axis="coronal", mode="train", min_pixels=min_pixels, label_ids=ids)(volumes)
    expected = [(y, i) for y in range(labels.shape[1]) for i in ids if (labels[:, y, :] == i).sum() >= min_pixels]
    assert [(s["slice_index"], s["label_id"]) for s in samples] == expected
    for s in samples[:: max(1, len(samples) // 10)]:
        assert int(s["label"].sum()) == int((labels[:, s["slice_index"], :] == s["label_id"]).sum())
        assert set(torch.unique(s["label"]).tolist()) == {0.0, 1.0}


def test_inference_slices_reassemble_into_the_input_volume_and_affine(colin27, tmp_path) -> None:
    image_nii, labels = colin27
    volumes = LoadVolumed(["image", "label"])({"image": str(COLIN27_DIR / "ch2.nii.gz"),
                                               "label": str(COLIN27_DIR / "aal.nii.gz")})
    samples = SliceVolumed(axis="axial", mode="inference")(volumes)
    assert [s["slice_index"] for s in samples] == list(range(labels.shape[2]))
    # stand-in "prediction": the structure-77 mask of each slice, put back in a shuffled order
    order = np.random.default_rng(0).permutation(len(samples))
    preds = [(samples[i]["label"] == 77).to(torch.uint8) for i in order]
    volume = AssembleVolume("axial")(preds, [samples[i]["slice_index"] for i in order], labels.shape)
    path = write_nifti(volume, volumes["image"].affine, tmp_path / "pred.nii.gz")
    written = nib.load(path)
    assert written.shape == image_nii.shape
    np.testing.assert_allclose(written.affine, image_nii.affine)
    assert np.array_equal(np.asarray(written.dataobj), (labels == 77).astype(np.uint8))


def test_point_prompts_fall_on_the_right_side(colin27) -> None:
    _, labels = colin27
    mask = torch.from_numpy((labels[:, :, 80] == 77).astype(np.float32))[None]
    sampler = RandPointsFromMaskd(num_positive=3, num_negative=2)
    sampler.set_random_state(0)
    for _ in range(20):
        out = sampler({"label": mask})
        values = [float(mask[0, int(y), int(x)]) for x, y in out["points"]]
        assert values == out["point_labels"].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    empty = sampler({"label": torch.zeros_like(mask)})
    assert empty["point_labels"].tolist() == [0.0] * 5 and sampler.sampler.empty_count == 1


def test_invesalius_head_ct_is_real_hu_with_threshold_labels(tmp_path) -> None:
    hu, masks, affine = read_invesalius_project(DEFAULT_INVESALIUS)
    assert hu.shape == (256, 256, 108) and hu.min() == -1024 and hu.max() > 2000
    np.testing.assert_allclose(np.diag(affine)[:3], [0.9570312, 0.9570312, 1.5])
    bone = masks["threshold_226_3071"]
    assert np.array_equal(bone, (hu >= 226) & (hu <= 3071))  # what the project says: a threshold, not a drawing
    data = json.loads(prepare_invesalius_ct(tmp_path).read_text())
    assert data["training"] and data["validation"]
    assert max(s["slice"] for s in data["training"]) < min(s["slice"] for s in data["validation"])
    label = np.asarray(nib.load(tmp_path / "volumes" / "label.nii.gz").dataobj)
    assert np.array_equal(label == 1, bone & (label == 1)) and (label == 1).sum() < bone.sum()  # head-holder dropped

"""Colin27 + AAL (mricron-data) turned into 2-D box-prompted samples."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medsam_peft.data import SUBCORTICAL, prepare_colin27_aal
from tests.conftest import COLIN27_DIR


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("colin27")
    return root, json.loads(prepare_colin27_aal(root, min_pixels=50).read_text())


def test_one_sample_per_slice_structure_pair_with_enough_pixels(prepared) -> None:
    root, datalist = prepared
    labels = np.asarray(nib.load(COLIN27_DIR / "aal.nii.gz").dataobj)
    expected = sum(int(((labels[:, :, z] == s).sum()) >= 50) for z in range(labels.shape[2]) for s in SUBCORTICAL)
    assert len(datalist["training"]) + len(datalist["validation"]) == expected == 305
    assert {e["structure"].endswith("_L") for e in datalist["training"]} == {True}
    assert {e["structure"].endswith("_R") for e in datalist["validation"]} == {True}


def test_written_masks_are_the_atlas_labels(prepared) -> None:
    root, datalist = prepared
    labels = np.asarray(nib.load(COLIN27_DIR / "aal.nii.gz").dataobj)
    for entry in datalist["validation"][::25]:
        mask = np.asarray(Image.open(root / entry["label"])) > 0
        structure = int(entry["label"].split("aal")[-1][:3])
        expected = (labels[:, :, entry["slice"]] == structure).T[::-1]
        assert np.array_equal(mask, expected)
        assert np.asarray(Image.open(root / entry["image"])).shape == mask.shape == (217, 181)


def test_missing_source_names_the_package(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="mricron-data"):
        prepare_colin27_aal(tmp_path / "out", source=tmp_path)
    with pytest.raises(ValueError, match="no structure id"):
        prepare_colin27_aal(tmp_path / "out", structures=(999,))

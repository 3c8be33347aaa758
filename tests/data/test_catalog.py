"""Dataset downloaders against a local server: official layouts built in the test, verified, indexed."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from medsam_peft.cli import main as cli_main
from medsam_peft.data import DATASETS, DatasetUnavailable, prepare_dataset
from medsam_peft.transforms import LoadImageMaskd


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


def _kvasir_zip(path, count: int = 20) -> dict[str, np.ndarray]:
    """Kvasir-SEG's published layout: Kvasir-SEG/images/<id>.jpg + Kvasir-SEG/masks/<id>.jpg (JPEG masks)."""
    rng = np.random.default_rng(0)
    truth = {}
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(count):
            h, w = 60 + i, 80
            mask = np.zeros((h, w), np.uint8)
            mask[10 + i % 5: 40, 20: 50 + i % 7] = 255
            image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            zf.writestr(f"Kvasir-SEG/images/cju{i:04d}.jpg", _jpeg(image))
            zf.writestr(f"Kvasir-SEG/masks/cju{i:04d}.jpg", _jpeg(np.repeat(mask[..., None], 3, 2)))
            truth[f"cju{i:04d}"] = mask > 0
        zf.writestr("Kvasir-SEG/kavsir_bboxes.json", "{}")
    return truth


def test_prepare_kvasir_downloads_verifies_and_indexes(local_server, tmp_path, capsys) -> None:
    served, url = local_server
    truth = _kvasir_zip(served / "kvasir-seg.zip")
    root = tmp_path / "kvasir"
    assert cli_main(["prepare", "kvasir", "--root", str(root), "--mirror", url]) == 0
    assert "wrote" in capsys.readouterr().out
    data = json.loads((root / "datalist.json").read_text())
    assert {k: len(data[k]) for k in ("training", "validation", "test")} == {"training": 16, "validation": 2, "test": 2}
    names = [e["image"] for k in ("training", "validation", "test") for e in data[k]]
    assert len(set(names)) == 20  # disjoint splits covering every image
    loader = LoadImageMaskd()
    for entry in data["training"] + data["test"]:
        sample = loader({"image": str(root / entry["image"]), "label": str(root / entry["label"])})
        stem = entry["image"].rsplit("/", 1)[-1][:-4]
        # JPEG ringing is thresholded away: the binary PNG equals the drawn rectangle
        assert np.array_equal(sample["label"][0].numpy() > 0, truth[stem])
    recorded = json.loads((root / "downloads" / "checksums.json").read_text())
    assert len(recorded["kvasir-seg.zip"]) == 64
    # a changed upstream file no longer matches the recorded checksum: clear error, no silent re-index
    (root / "raw" / ".extracted-kvasir-seg.zip").unlink()
    (root / "downloads" / "kvasir-seg.zip").write_bytes(b"tampered")
    with pytest.raises(DatasetUnavailable, match="sha256 .* does not match"):
        prepare_dataset("kvasir", root, mirror=url)


def test_published_md5_rejects_a_wrong_file(local_server, tmp_path) -> None:
    served, url = local_server
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        info = tarfile.TarInfo("VOCdevkit/VOC2012/readme.txt")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
    (served / "VOCtrainval_11-May-2012.tar").write_bytes(buffer.getvalue())
    with pytest.raises(DatasetUnavailable, match=r"md5 .* does not match the published 6cd6e144"):
        prepare_dataset("voc2012", tmp_path / "voc", mirror=url)
    assert not (tmp_path / "voc" / "downloads" / "VOCtrainval_11-May-2012.tar").exists()  # nothing half-kept


def test_registration_datasets_say_how_to_get_them(tmp_path) -> None:
    with pytest.raises(DatasetUnavailable, match=r"CVC-ClinicDB page.*--source DIR"):
        prepare_dataset("cvc_clinicdb", tmp_path / "cvc")
    with pytest.raises(KeyError, match="unknown dataset 'kvasr'.*kvasir"):
        prepare_dataset("kvasr", tmp_path / "x")


def test_user_copy_with_tiff_masks_via_source(tmp_path) -> None:
    """CVC-ClinicDB as users receive it: Original/*.tif RGB frames, Ground Truth/*.tif masks."""
    source = tmp_path / "CVC-ClinicDB"
    (source / "Original").mkdir(parents=True)
    (source / "Ground Truth").mkdir()
    for i in range(1, 31):
        Image.fromarray(np.full((40, 50, 3), i, np.uint8)).save(source / "Original" / f"{i}.tif")
        mask = np.zeros((40, 50), np.uint8)
        mask[5:5 + i, 10:20] = 255
        Image.fromarray(mask).save(source / "Ground Truth" / f"{i}.tif")
    path = prepare_dataset("cvc_clinicdb", tmp_path / "cvc", source=source)
    data = json.loads(path.read_text())
    assert {k: len(data[k]) for k in ("training", "validation", "test")} == {"training": 24, "validation": 3, "test": 3}
    entry = data["test"][0]
    i = int(entry["image"].rsplit("/", 1)[-1][:-4])
    sample = LoadImageMaskd()({"image": str(tmp_path / "cvc" / entry["image"]),
                               "label": str(tmp_path / "cvc" / entry["label"])})
    assert float(sample["label"].sum()) == i * 10 and float(sample["image"][0, 0, 0]) == i


def test_every_seed_dataset_is_catalogued() -> None:
    seeds = {"kvasir", "cvc_clinicdb", "isic2017", "camo", "sbu", "leaf", "road", "abdomenct", "coco2017",
             "voc2012", "nwpu", "whu", "trans10k"}
    assert seeds <= set(DATASETS)
    for spec in DATASETS.values():
        assert spec.archives or spec.registration, spec.name  # either downloadable or says how to get it
        assert all(a.url.startswith(("https://", "http://")) for a in spec.archives)


def test_abdomen_ct_nifti_pairs_keep_the_volume_meta(tmp_path) -> None:
    """NIfTI pairs via --source: patient-level split, slices with >= 100 px, and the meta that the 3-D evaluation
    config reads (labels, plane, HU window) survives into the written datalist."""
    import nibabel as nib

    source = tmp_path / "AbdomenCT"
    source.mkdir()
    for i in range(5):
        hu = np.full((40, 40, 12), -1000.0, np.float32)
        label = np.zeros((40, 40, 12), np.uint8)
        hu[5:30, 5:30, 2:10], label[5:30, 5:30, 2:10] = 60.0, 1  # 625 px per slice, 5,000 voxels
        nib.save(nib.Nifti1Image(hu, np.eye(4)), source / f"Case_{i:05d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), source / f"Case_{i:05d}.nii.gz")
    data = json.loads(prepare_dataset("abdomenct", tmp_path / "ct", source=source).read_text())
    assert len(data["test_volumes"]) == 1 and len(data["training_volumes"]) == 4
    assert len(data["training"]) == 4 * 8 and len(data["test"]) == 8
    assert data["meta"]["labels"]["1"] == "liver" and data["meta"]["window"] == [-500.0, 1000.0]
    assert data["meta"]["plane"] == "axial" and data["meta"]["name"] == "abdomenct"

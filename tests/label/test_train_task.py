"""The pieces of MONAI Label's train task that need no model: request checks, the datastore's labels as 2-D training
samples (real Colin27/AAL volume and slices), the split, the generated training config, publishing an adapter."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medsam_peft.data.volumes import slice_to_image, to_uint8
from medsam_peft.errors import DataError
from medsam_peft.label.predictor import LabelRequestError
from medsam_peft.label.train import (TRAIN_DEFAULTS, datastore_samples, package_configs_dir, parse_train_request,
                                     publish_adapter, read_metric_report, split_samples, training_config)
from medsam_peft.tuners import build_tuned_sam, read_adapter, save_adapter
from medsam_peft.tuners.adapter_io import bundle_adapter_file
from tests.conftest import COLIN27_DIR

RIGHT_THALAMUS, RIGHT_CAUDATE = 78, 72


def test_train_request_defaults_and_each_bad_value_named() -> None:
    assert parse_train_request({}) == {k: TRAIN_DEFAULTS[k] for k in parse_train_request({})}
    assert parse_train_request({"max_epochs": 3.0, "learning_rate": 5e-4})["max_epochs"] == 3
    for request, message in (({"max_epochs": 0}, "max_epochs must be an integer in 1..1000"),
                             ({"max_epochs": 1.5}, "max_epochs must be an integer"),
                             ({"max_epochs": True}, "max_epochs must be"),
                             ({"learning_rate": "fast"}, "learning_rate must be a number"),
                             ({"val_split": 1.0}, "val_split must be between 0 and 1"),
                             ({"batch_size": -2}, "batch_size must be"),
                             ({"pretrained": "yes"}, "pretrained must be true or false")):
        with pytest.raises(LabelRequestError, match=message) as caught:
            parse_train_request(request)
        assert caught.value.status == 422


def test_a_labelled_volume_becomes_the_slices_the_predictor_reads(tmp_path) -> None:
    """Colin27 with an annotator's label volume (right thalamus = 1, right caudate = 2): each axial slice holding an
    object with >= min_pixels pixels is one sample per object, oriented and scaled as the predictor reads volumes."""
    image = nib.load(COLIN27_DIR / "ch2.nii.gz")
    aal = np.asarray(nib.load(COLIN27_DIR / "aal.nii.gz").dataobj)
    labels = (aal == RIGHT_THALAMUS).astype(np.uint8) + 2 * (aal == RIGHT_CAUDATE).astype(np.uint8)
    label_file = tmp_path / "colin27_label.nii.gz"
    nib.save(nib.Nifti1Image(labels, image.affine), label_file)
    samples = datastore_samples([{"image": str(COLIN27_DIR / "ch2.nii.gz"), "label": str(label_file)}],
                                tmp_path / "out", min_pixels=20)
    found = samples["ch2"]
    expected = {(z, v) for v in (1, 2) for z in range(labels.shape[2]) if (labels[:, :, z] == v).sum() >= 20}
    assert {(s["slice"], s["label_id"]) for s in found} == expected and len(found) == len(expected)
    middle = sorted(found, key=lambda s: s["slice"])[len(found) // 2]
    mask = np.asarray(Image.open(middle["label"])) > 0
    assert np.array_equal(mask, slice_to_image(labels[:, :, middle["slice"]] == middle["label_id"]))
    plane = np.asarray(Image.open(middle["image"]))
    volume = np.asarray(image.dataobj, dtype=np.float32)
    assert np.array_equal(plane, slice_to_image(to_uint8(volume)[:, :, middle["slice"]]))


def test_a_2d_label_map_gives_one_sample_per_value_and_a_wrong_size_is_named(tmp_path) -> None:
    image = tmp_path / "slice.png"
    Image.fromarray(np.zeros((40, 60), dtype=np.uint8)).save(image)
    labels = np.zeros((40, 60), dtype=np.uint8)
    labels[5:15, 5:15] = 1  # 100 px
    labels[20:24, 30:34] = 3  # 16 px: under min_pixels
    labels[25:35, 40:50] = 7
    (tmp_path / "labels").mkdir()
    Image.fromarray(labels).save(tmp_path / "labels" / "slice.png")
    samples = datastore_samples([{"image": str(image), "label": str(tmp_path / "labels" / "slice.png")}],
                                tmp_path / "out", min_pixels=20)["slice"]
    assert [s["label_id"] for s in samples] == [1, 7]
    assert [int((np.asarray(Image.open(s["label"])) > 0).sum()) for s in samples] == [100, 100]
    Image.fromarray(np.zeros((41, 60), dtype=np.uint8)).save(tmp_path / "labels" / "slice.png")
    with pytest.raises(DataError, match=r"label slice.png is 60x41 but image slice.png is 60x40"):
        datastore_samples([{"image": str(image), "label": str(tmp_path / "labels" / "slice.png")}], tmp_path / "o2", 20)


def test_split_keeps_each_image_on_one_side() -> None:
    samples = {f"img{i}": [{"case": f"img{i}", "n": k} for k in range(i + 1)] for i in range(5)}
    training, validation = split_samples(samples, 0.2)
    assert {s["case"] for s in validation} == {"img4"} and len(validation) == 5
    assert {s["case"] for s in training} == {"img0", "img1", "img2", "img3"}
    single = {"vol": [{"case": "vol", "n": k} for k in range(10)]}
    training, validation = split_samples(single, 0.25)
    assert [s["n"] for s in validation] == [3, 7] and len(training) == 8


def test_generated_training_config_resolves_with_the_bundle_model_and_recipe(tmp_path) -> None:
    from monai.bundle import ConfigParser

    model = build_tuned_sam("lite_medsam", None, "conv_lora", image_size=256, device="cpu",
                            tuner_options={"r": 3, "trainable_modules": ["mask_decoder"]}, mask_tokens=None)
    adapter = tmp_path / "model.pt"
    save_adapter(model, adapter)
    settings = {**parse_train_request({"max_epochs": 2}), "pretrained": True}
    config = training_config(package_configs_dir(), adapter, {"prompt": "interactive", "checkpoint": "bundled"},
                             settings, tmp_path / "run", "cpu", "demo")
    parser = ConfigParser(config)
    parser.resolve_macro_and_relative_ids()
    resolved = parser.get()
    assert resolved["key_metric"] == "val_dice_click3" and resolved["max_epochs"] == 2
    assert resolved["prepare_batch"]["_target_"] == "medsam_peft.engines.InteractivePrepareBatch"
    assert resolved["network_def"]["adapter"] == str(adapter) and resolved["tuner_options"]["r"] == 3
    assert resolved["train"]["dataset"]["_target_"] == "CacheDataset" and resolved["resume"] is False
    fresh = training_config(package_configs_dir(), adapter, {"prompt": "box"}, {**settings, "pretrained": False},
                            tmp_path / "run", "cpu", "demo")
    assert fresh["network_def"]["adapter"] is None and fresh["key_metric"] == "val_mean_dice"
    with pytest.raises(Exception, match="not found in"):
        package_configs_dir(tmp_path)


def test_publish_keeps_the_previous_adapter_and_bumps_the_version(tmp_path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    (bundle / "configs").mkdir()
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1.0", "changelog": {"0.1.0": "x"}}))
    model = build_tuned_sam("lite_medsam", None, "lora", image_size=256, device="cpu", tuner_options={"r": 2})
    save_adapter(model, bundle / "models" / "model.pt")  # a bundle exported before safetensors
    old = (bundle / "models" / "model.pt").read_bytes()
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).add_(1.0)
    new = save_adapter(model, tmp_path / "best.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not an adapter")
    with pytest.raises(Exception, match="broken.safetensors"):
        publish_adapter(bundle, tmp_path / "broken.safetensors", "s0", "never")
    assert (bundle / "models" / "model.pt").read_bytes() == old and bundle_adapter_file(bundle).name == "model.pt"
    assert publish_adapter(bundle, new, "s1", "fine-tuned") == bundle / "models" / "model.safetensors"
    assert bundle_adapter_file(bundle) == bundle / "models" / "model.safetensors"
    assert read_adapter(bundle / "models" / "model.safetensors")["metadata"] == read_adapter(new)["metadata"]
    plain = torch.load(bundle / "models" / "model.pt", weights_only=True)  # now the adapter-only state dict
    assert all(torch.equal(plain[f"model.{k}"], v) for k, v in read_adapter(new)["state_dict"].items())
    assert (bundle / "models" / "history" / "model_s1.pt").read_bytes() == old
    publish_adapter(bundle, tmp_path / "best.safetensors", "s2", "again")
    assert (bundle / "models" / "history" / "model_s2.safetensors").is_file()
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["version"] == "0.1.2" and list(meta["changelog"]) == ["0.1.2", "0.1.1", "0.1.0"]


def test_metric_report_lines_are_read_back(tmp_path) -> None:
    report = tmp_path / "metric_report.txt"
    report.write_text("val_dice_click3: zero-shot 0.2402 -> tuned 0.7042 (epoch 4, +0.4640)\n"
                      "val_noc85: zero-shot 5.0000 -> tuned 4.4808 (epoch 4, -0.5192)\nnoise\n")
    assert read_metric_report(report) == {"val_dice_click3": {"before": 0.2402, "after": 0.7042, "epoch": 4},
                                          "val_noc85": {"before": 5.0, "after": 4.4808, "epoch": 4}}
    assert read_metric_report(tmp_path / "absent.txt") == {}


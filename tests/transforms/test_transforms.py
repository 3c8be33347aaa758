"""Resize/pad with its exact inverse and jittered boxes, on real Colin27/AAL masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medsam_peft.data import prepare_colin27_aal
from medsam_peft.transforms import BoxFromMask, RandBoxFromMaskd, ResizeLongestSide, RestoreOriginalSize


@pytest.fixture(scope="module")
def real_masks(tmp_path_factory) -> list[torch.Tensor]:
    root = tmp_path_factory.mktemp("colin27")
    datalist = json.loads(prepare_colin27_aal(root, slice_step=2).read_text())
    entries = datalist["training"] + datalist["validation"]
    return [torch.as_tensor(np.asarray(Image.open(root / e["label"])) > 0)[None].float() for e in entries]


@pytest.mark.parametrize("size", [256, 512, 1024])
def test_resize_pad_then_inverse_restores_real_masks_exactly(real_masks, size) -> None:
    forward, inverse = ResizeLongestSide(size, "nearest-exact"), RestoreOriginalSize(size, "nearest-exact")
    for mask in real_masks:
        resized = forward(mask)
        assert resized.shape == (1, size, size)
        assert resized[:, :, round(181 * size / 217):].sum() == 0  # padding only on the right (217 x 181 slices)
        assert torch.equal(inverse(resized, mask.shape[-2:]), mask)


@pytest.mark.parametrize("squash", [False, True])
def test_invertd_restores_a_prediction_through_the_recorded_resize(real_masks, squash) -> None:
    """ResizeLongestSided records the original size on the MetaTensor: MONAI's Invertd (as configs/evaluate.json
    and configs/inference.json use it) brings a model-frame prediction back to the image's grid, equal to
    RestoreOriginalSize, and a mask through nearest-exact back to itself."""
    from monai.data import MetaTensor
    from monai.transforms import Compose, Invertd

    from medsam_peft.transforms import ResizeLongestSided

    preprocessing = Compose([ResizeLongestSided(["image", "label"], 256, mode=["bilinear", "nearest-exact"],
                                                squash=squash)])
    for mask in real_masks[:3]:
        image = MetaTensor(torch.rand(3, *mask.shape[-2:]))
        sample = preprocessing({"image": image, "label": MetaTensor(mask.clone())})
        assert sample["image"].shape == (3, 256, 256) and len(sample["image"].applied_operations) == 1
        prob = torch.rand(1, 256, 256)
        restored = Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False)(
            {**sample, "pred": MetaTensor(prob)})["pred"]  # the engines' predictions are MetaTensors
        expected = RestoreOriginalSize(256, "bilinear", squash)(prob, mask.shape[-2:])
        assert restored.shape == mask.shape and torch.allclose(restored.as_tensor(), expected)
        label_back = Invertd(keys="label", transform=preprocessing, orig_keys="label", nearest_interp=False)(
            sample)["label"]
        assert torch.equal(label_back.as_tensor(), mask)


def test_squash_resize_inverse() -> None:
    mask = torch.zeros(1, 40, 60)
    mask[0, 10:20, 5:50] = 1
    forward, inverse = ResizeLongestSide(128, "nearest-exact", squash=True), RestoreOriginalSize(128, squash=True)
    assert forward(mask).shape == (1, 128, 128)
    assert torch.equal(inverse(forward(mask), (40, 60)), mask)


def test_boxes_contain_real_masks_and_exceed_them_by_at_most_20_px(real_masks) -> None:
    boxer = BoxFromMask(max_jitter=20)
    boxer.set_random_state(0)
    margins = []
    for mask in real_masks:
        for _ in range(5):
            x0, y0, x1, y1 = boxer(mask).tolist()
            ys, xs = torch.nonzero(mask[0], as_tuple=True)
            m = [xs.min() - x0, ys.min() - y0, x1 - xs.max(), y1 - ys.max()]
            assert all(0 <= float(v) <= 20 for v in m)
            assert 0 <= x0 <= x1 <= mask.shape[2] - 1 and 0 <= y0 <= y1 <= mask.shape[1] - 1
            margins += [float(v) for v in m]
    assert max(margins) == 20 and min(margins) == 0  # the whole 0..20 range is drawn


def test_box_is_computed_after_spatial_augmentation() -> None:
    mask = torch.zeros(1, 32, 32)
    mask[0, 4:8, 2:10] = 1
    flipped = {"label": torch.flip(mask, dims=[2])}
    box = RandBoxFromMaskd("label", "box", max_jitter=0)(flipped)["box"]
    assert box.tolist() == [22.0, 4.0, 29.0, 7.0]


def test_empty_mask_is_counted_not_fatal(caplog) -> None:
    boxer = RandBoxFromMaskd("label", "box", max_jitter=3)
    out = boxer({"label": torch.zeros(1, 16, 24)})
    assert out["box"].tolist() == [0.0, 0.0, 23.0, 15.0] and boxer.empty_count == 1
    assert "empty mask" in caplog.text

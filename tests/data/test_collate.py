"""Batched evaluation: labels kept at each image's original size are padded to a batch and cropped back exactly."""

from __future__ import annotations

import torch
from monai.data import MetaTensor, decollate_batch

from medsam_peft.data import PadRaggedCollate
from medsam_peft.transforms import CropToShaped


def _sample(height: int, width: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    label = MetaTensor((torch.rand(1, height, width, generator=g) > 0.5).float(),
                       meta={"filename_or_obj": f"/data/mask{seed}.png"})
    return {"image": torch.rand(3, 32, 32, generator=g), "label_original": label}


def test_ragged_labels_survive_collate_and_decollate_exactly() -> None:
    samples = [_sample(20, 31, 0), _sample(27, 12, 1), _sample(20, 31, 2)]
    batch = PadRaggedCollate(["label_original"])(samples)
    assert tuple(batch["label_original"].shape) == (3, 1, 27, 31)  # padded to the largest of each axis
    assert torch.equal(batch["image"], torch.stack([s["image"] for s in samples]))
    restored = [CropToShaped("label_original")(item) for item in decollate_batch(batch)]
    for item, sample in zip(restored, samples):
        assert torch.equal(item["label_original"].as_tensor(), sample["label_original"].as_tensor())
        assert item["label_original"].meta["filename_or_obj"] == sample["label_original"].meta["filename_or_obj"]


def test_equal_shapes_are_not_padded_and_an_unpadded_label_is_left_alone() -> None:
    samples = [_sample(16, 16, 3), _sample(16, 16, 4)]
    batch = PadRaggedCollate(["label_original"])(samples)
    assert tuple(batch["label_original"].shape) == (2, 1, 16, 16)
    assert batch["label_original_shape"].tolist() == [[16, 16], [16, 16]]
    alone = {"label_original": samples[0]["label_original"]}
    assert CropToShaped("label_original")(alone)["label_original"] is alone["label_original"]

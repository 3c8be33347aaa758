"""bf16 autocast (the default of every bundle) keeps tuned outputs within a stated tolerance of fp32."""

from __future__ import annotations

import copy

import torch

from medsam_peft.engines import AutocastInferer
from medsam_peft.models import build_sam
from medsam_peft.tuners import get_tuned_model

# Stated tolerance: on a real MR slice with the real LiteMedSAM weights and a trained-looking (random) adapter, bf16
# masks agree with fp32 masks to Dice >= 0.98; probabilities differ by < 0.005 on average and < 0.1 at any pixel.
MIN_MASK_DICE, MEAN_PROB_DIFF, MAX_PROB_DIFF = 0.98, 0.005, 0.1


def test_bf16_autocast_stays_within_tolerance_of_fp32(lite_medsam_state, colin27_slice) -> None:
    base = build_sam("lite_medsam")
    base.load_state_dict(lite_medsam_state)
    torch.manual_seed(0)
    model = get_tuned_model(copy.deepcopy(base), "conv_lora", init_weights=False, mask_tokens=None).eval()
    image, box = colin27_slice["image"][None], colin27_slice["box"][None]
    with torch.no_grad():
        fp32 = AutocastInferer("float32")(image, model, boxes=box).sigmoid()
        bf16 = AutocastInferer("bfloat16")(image, model, boxes=box).sigmoid()
    assert bf16.dtype == torch.float32  # losses and metrics always see fp32
    a, b = fp32 > 0.5, bf16 > 0.5
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert a.sum() > 100 and dice >= MIN_MASK_DICE, float(dice)
    diff = (fp32 - bf16).abs()
    assert float(diff.mean()) < MEAN_PROB_DIFF and float(diff.max()) < MAX_PROB_DIFF, (float(diff.mean()), float(diff.max()))

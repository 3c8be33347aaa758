"""Autocast precision: bf16 (the default wherever it is native) keeps tuned outputs within a stated tolerance of fp32,
and `auto` picks bf16 only where the device runs it natively."""

from __future__ import annotations

import copy

import pytest
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
    model = get_tuned_model(copy.deepcopy(base), "conv_lora", init_weights=False).eval()  # SAM's four tokens
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


def test_auto_precision_follows_the_measured_bfloat16_speed(monkeypatch) -> None:
    """`auto` (every bundle's default) uses bf16 only where it is native: measured once per process, because an
    AVX2-only CPU emulates it 40-100x slower than float32 (the reason the default is no longer bfloat16)."""
    from medsam_peft.utils import precision

    measured = precision.cpu_bfloat16_slowdown()
    assert measured > 0
    seen: list[torch.dtype] = []
    probe = torch.nn.Linear(4, 4)
    probe.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    for slowdown, expected in ((52.0, "float32"), (0.7, "bfloat16"), (3.9, "bfloat16"), (4.1, "float32")):
        monkeypatch.setattr(precision, "cpu_bfloat16_slowdown", lambda: slowdown)
        assert precision.resolve_precision("auto", "cpu") == expected
        out = AutocastInferer("auto")(torch.rand(2, 4), probe)
        assert seen[-1] == getattr(torch, expected) and out.dtype == torch.float32
    assert precision.resolve_precision("float32", "cpu") == "float32"
    assert precision.resolve_precision("bfloat16", "cpu") == "bfloat16"  # an explicit choice is kept (with a warning)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.resolve_precision("auto", "cuda") == "float16"  # old GPUs: fp16 with the trainer's GradScaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.resolve_precision("auto", "cuda") == "bfloat16"
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve_precision("fp8", "cpu")

"""Losses against hand-written formulas; SOD metrics against py_sod_metrics called directly; BER by hand."""

from __future__ import annotations

import numpy as np
import py_sod_metrics
import pytest
import torch
from scipy import ndimage

from medsam_peft.engines import BalancedBCEWithLogitsLoss, BalancedErrorRate, SodMetric, StructureLoss, dice_score


def _masks(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    target = np.zeros((2, 1, 48, 48), np.float32)
    target[0, 0, 10:30, 12:40] = 1
    target[1, 0, 5:20, 5:15] = 1
    logits = rng.normal(size=target.shape).astype(np.float32) * 2 + (target * 2 - 1)
    return torch.from_numpy(logits), torch.from_numpy(target)


def test_structure_loss_matches_an_independent_numpy_computation() -> None:
    logits, target = _masks()
    x, g = logits.numpy().astype(np.float64), target.numpy().astype(np.float64)
    # uniform_filter with zero padding and count_include_pad == AvgPool2d(31, 1, 15)
    pooled = ndimage.uniform_filter(g, size=(1, 1, 31, 31), mode="constant", cval=0.0)
    w = 1 + 5 * np.abs(pooled - g)
    p = 1 / (1 + np.exp(-x))
    bce = np.maximum(x, 0) - x * g + np.log1p(np.exp(-np.abs(x)))
    wbce = (w * bce).sum(axis=(2, 3)) / w.sum(axis=(2, 3))
    inter, union = (w * p * g).sum(axis=(2, 3)), (w * (p + g)).sum(axis=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    assert float(StructureLoss()(logits, target)) == pytest.approx(float((wbce + wiou).mean()), rel=1e-5)
    quirk = float(StructureLoss(weighted_bce=False)(logits, target))  # the reference's effective plain mean BCE
    assert quirk == pytest.approx(float(bce.mean() + wiou.mean()), rel=1e-5)
    assert abs(quirk - float(StructureLoss()(logits, target))) > 1e-3  # the option changes the loss


def test_balanced_bce_weights_classes_by_the_other_class_share() -> None:
    logits, target = _masks()
    x, g = logits.numpy().astype(np.float64), target.numpy().astype(np.float64)
    pos, neg = g.sum(), (1 - g).sum()
    per_pixel = (neg / pos) * g * np.log1p(np.exp(-x)) + (1 - g) * np.log1p(np.exp(x))
    expected = pos / (pos + neg) * per_pixel.mean()
    assert float(BalancedBCEWithLogitsLoss()(logits, target)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", ["sm", "em", "wfm", "mae"])
def test_sod_metrics_equal_py_sod_metrics_on_uint8_maps(kind) -> None:
    logits, target = _masks()
    probs = torch.sigmoid(logits)
    metric = SodMetric(kind)
    metric.update((list(probs), list(target)))
    reference = {"sm": py_sod_metrics.Smeasure, "em": py_sod_metrics.Emeasure, "wfm": py_sod_metrics.WeightedFmeasure,
                 "mae": py_sod_metrics.MAE}[kind]()
    for prob, gt in zip(probs, target):
        reference.step((prob[0].numpy() * 255).round().astype(np.uint8), (gt[0].numpy() * 255).astype(np.uint8))
    result = reference.get_results()[kind]
    expected = result["curve"].mean() if kind == "em" else result
    assert metric.compute() == pytest.approx(float(expected), abs=1e-12)
    perfect = SodMetric(kind)
    perfect.update((list(target), list(target)))
    # mean E-measure averages 256 thresholds; threshold 0 marks every pixel foreground, so perfect is just below 1
    assert perfect.compute() == pytest.approx(0.0 if kind == "mae" else 1.0, abs=5e-3 if kind == "em" else 1e-6)


def test_ber_per_image_and_over_the_dataset() -> None:
    target = torch.zeros(2, 1, 10, 10)
    target[0, 0, :5] = 1  # 50 positives
    target[1, 0, :2] = 1  # 20 positives
    pred = target.clone()
    pred[0, 0, 0] = 0  # 10 false negatives in image 0
    pred[1, 0, 9, :5] = 1  # 5 false positives in image 1
    per_image = BalancedErrorRate(per_image=True)
    per_image.update((list(pred), list(target)))
    image_bers = [1 - 0.5 * (40 / 50 + 50 / 50), 1 - 0.5 * (20 / 20 + 75 / 80)]
    assert per_image.compute() == pytest.approx(np.mean(image_bers))
    dataset = BalancedErrorRate(per_image=False)
    dataset.update((list(pred), list(target)))
    assert dataset.compute() == pytest.approx(1 - 0.5 * (60 / 70 + 125 / 130))


def test_dice_score_nan_when_both_empty() -> None:
    assert np.isnan(dice_score(np.zeros(5), np.zeros(5)))
    assert dice_score(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0])) == pytest.approx(2 / 3)


def test_gradient_clipping_waits_for_the_accumulated_gradient() -> None:
    """With the trainer's accumulation_steps = 2 over a 3-iteration epoch, steps happen after iterations 2 and 3
    (the epoch's last): only those backwards are clipped."""
    from ignite.engine import Engine

    from medsam_peft.engines import GradientClipHandler

    layer = torch.nn.Linear(4, 1)
    engine = Engine(lambda e, b: None)
    engine.accumulation_steps = 2
    engine.state.epoch_length = 3
    clip = GradientClipHandler(layer, max_norm=1.0)
    clipped = []
    for iteration in (1, 2, 3):
        for p in layer.parameters():
            p.grad = torch.full_like(p, 10.0)
        engine.state.iteration = iteration
        clip(engine)
        norm = torch.sqrt(sum((p.grad ** 2).sum() for p in layer.parameters()))
        clipped.append(bool(norm <= 1.0 + 1e-6))
    assert clipped == [False, True, True]


def test_gradient_clipping_unscales_fp16_gradients_first() -> None:
    """fp16 training (trainer amp=True) scales the loss; clipping must act on the true gradient, and the scaler's
    step must then apply it once, unscaled."""
    from ignite.engine import Engine

    from medsam_peft.engines import GradientClipHandler

    layer = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    engine = Engine(lambda e, b: None)
    engine.amp, engine.optimizer = True, optimizer
    engine.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    engine.scaler.scale(torch.ones(()))  # as the trainer's scaler.scale(loss).backward() does first
    engine.state.epoch_length = engine.state.iteration = 1
    before = [p.detach().clone() for p in layer.parameters()]
    true_grad = [torch.full_like(p, 0.1) for p in layer.parameters()]  # norm 0.1 * sqrt(5) < 1: not clipped
    for p, g in zip(layer.parameters(), true_grad):
        p.grad = g * 1024.0  # what backward of the scaled loss leaves
    GradientClipHandler(layer, max_norm=1.0)(engine)
    assert all(torch.allclose(p.grad, g) for p, g in zip(layer.parameters(), true_grad))
    engine.scaler.step(optimizer)
    assert all(torch.allclose(p, b - g) for p, b, g in zip(layer.parameters(), before, true_grad))

"""Evaluation outputs: metric files and the per-volume 3-D evaluation of sliced CT/MR."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine

from medsam_peft.engines.metrics import dice_score
from medsam_peft.utils.atomic_io import write_json_atomic
from medsam_peft.utils.precision import resolve_precision


def write_metrics(evaluator: Engine, path: str | os.PathLike, split: str = "") -> dict[str, float]:
    """Print the evaluator's metrics and write them as JSON (atomically), with the run's throughput: images, wall
    seconds of the evaluator's run (loading, prediction, restoring to original size, scoring and saving masks) and
    images/s."""
    metrics = {k: float(v) for k, v in evaluator.state.metrics.items() if isinstance(v, (int, float))}
    report: dict[str, Any] = {"split": split, "metrics": metrics}
    seconds = (getattr(evaluator.state, "times", None) or {}).get("COMPLETED")
    loader = getattr(evaluator, "data_loader", None)
    images = len(loader.dataset) if loader is not None and hasattr(loader, "dataset") else None
    timing = ""
    if seconds and images:
        batch = getattr(loader, "batch_size", None)
        report["timing"] = {"images": images, "batch_size": batch, "seconds": round(seconds, 3),
                            "images_per_s": round(images / seconds, 4)}
        timing = f"  ({images} images in {seconds:.1f} s, {images / seconds:.2f} images/s, batch {batch})"
    write_json_atomic(path, report)
    print(f"{split or 'evaluation'}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + timing, flush=True)
    return metrics


def _box(mask: np.ndarray) -> torch.Tensor:
    ys, xs = np.nonzero(mask)
    return torch.tensor([[xs.min(), ys.min(), xs.max(), ys.max()]], dtype=torch.float32)


@torch.no_grad()
def predict_volumes(
    network: torch.nn.Module,
    volumes: list[dict[str, Any]],
    output_dir: str | os.PathLike,
    label_ids: list[int],
    image_size: int,
    plane: str = "axial",
    window: tuple[float, float] | None = (-500.0, 1000.0),
    min_pixels: int = 1,
    precision: str | None = "auto",
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """SAM-PARSER's 3-D protocol: for every slice where a structure is present, prompt the tuned model with the
    structure's ground-truth box (no jitter), put the 2-D predictions back into a volume with the input's affine,
    write it as NIfTI (``<case>_pred.nii.gz``, label ids as values) and score 3-D Dice per structure and volume.

    Intensities are scaled as the training slices were (``window`` for CT, percentiles for MR when ``None``).
    """
    from medsam_peft.data.volumes import image_to_slice, slice_to_image, to_uint8
    from medsam_peft.transforms import (
        AssembleVolume,
        LoadVolumed,
        ResizeLongestSide,
        RestoreOriginalSize,
        ScaleBoxd,
        SliceVolumed,
        write_nifti,
    )

    network.eval()
    output_dir = Path(output_dir)
    resize, restore = ResizeLongestSide(image_size, "bilinear"), RestoreOriginalSize(image_size, "bilinear")
    box_to_model = ScaleBoxd(size=image_size)
    report: dict[str, Any] = {"volumes": {}, "mean_dice": {}}
    for entry in volumes:
        case = entry.get("case") or Path(entry["image"]).name.split(".")[0]
        data = LoadVolumed(["image", "label"])({"image": entry["image"], "label": entry["label"]})
        scaled = torch.from_numpy(to_uint8(data["image"][0].numpy(), window).astype(np.float32) / 255.0)[None]
        label = torch.round(data["label"])
        slices = SliceVolumed(axis=plane, mode="inference")({"image": scaled, "label": label})
        prediction = torch.zeros_like(label[0], dtype=torch.uint8)
        for label_id in label_ids:
            planes, indices = [], []
            for item in slices:
                truth = slice_to_image((item["label"][0] == label_id).numpy())
                if truth.sum() < min_pixels:
                    continue
                image = torch.from_numpy(slice_to_image(item["image"][0].numpy()).copy())[None].expand(3, -1, -1)
                size = truth.shape
                box = box_to_model({"box": _box(truth), "image_original_size": size})["box"][None]
                dtype = getattr(torch, resolve_precision(precision, device))
                with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
                    logits = network(resize(image)[None].to(device), boxes=box.to(device)).float()
                prob = restore(torch.sigmoid(logits[0, :1]).cpu(), size)
                planes.append(image_to_slice(prob[0].numpy() > 0.5)[None])
                indices.append(item["slice_index"])
            if not planes:
                continue
            volume = AssembleVolume(plane)([torch.from_numpy(p) for p in planes], indices, label.shape[1:])[0]
            prediction[volume.bool() & (prediction == 0)] = label_id
            dice = dice_score(volume.numpy(), (label[0] == label_id).numpy())
            report["volumes"].setdefault(case, {})[str(label_id)] = dice
        write_nifti(prediction, data["image"].affine, output_dir / f"{case}_pred.nii.gz")
    for label_id in label_ids:
        values = [v[str(label_id)] for v in report["volumes"].values() if str(label_id) in v]
        values = [v for v in values if not math.isnan(v)]
        if values:
            report["mean_dice"][str(label_id)] = float(np.mean(values))
    write_json_atomic(output_dir / "volume_dice.json", report)
    print("3-D Dice per structure: " + "  ".join(f"{k} {v:.4f}" for k, v in report["mean_dice"].items()), flush=True)
    return report

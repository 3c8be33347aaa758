"""Small functions the bundle configs call: optimiser groups, tracked parameters, reports, data checks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch.nn as nn

from medsam_peft.tuners.base import TunedSam
from medsam_peft.utils.distributed import is_main_process

_NO_DECAY_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)


def optimizer_groups(network: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two AdamW groups as the Conv-LoRA reference: no weight decay on biases and on
    ``nn.LayerNorm``-type parameters; decay on everything else (SAM's own ``LayerNorm2d`` weights, LoRA A/B,
    expert convs, gates)."""
    no_decay = {id(p) for m in network.modules() if isinstance(m, _NO_DECAY_TYPES) for p in m.parameters(False)}
    decay, plain = [], []
    for name, param in network.named_parameters():
        if not param.requires_grad:
            continue
        (plain if name.endswith("bias") or id(param) in no_decay else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def tracked_params(network: TunedSam | None = None, **values: Any) -> dict[str, Any]:
    """Config values for MLflow params (dicts flattened as JSON) plus the trainable/total parameter counts."""
    params = {k: json.dumps(v) if isinstance(v, (dict, list, tuple)) else v for k, v in values.items()}
    if isinstance(network, TunedSam):
        report = network.parameter_report()
        params.update(trainable_params=report["trainable"], total_params=report["total"],
                      trainable_ratio=round(report["ratio"], 6))
    return params


def write_parameter_report(network: TunedSam, path: str | os.PathLike, **run_config: Any) -> Path:
    """Write ``parameter_report()`` as JSON (logged to MLflow as an artifact) and print its headline.

    ``run_config`` (backbone, checkpoint, image size, prompt mode, ...) goes to ``run_config.json`` beside it:
    ``medsam-peft export-bundle`` reads it to write the inference config of the exported bundle.
    """
    report = network.parameter_report()
    path = Path(path)
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    if run_config:
        prepare = run_config.pop("prepare_batch", None)
        run_config["prompt"] = prompt_mode(prepare)
        annotator = getattr(prepare, "annotator", None)
        run_config["multimask"] = bool(getattr(annotator, "multimask", False))
        run_config["click_radius"] = float(getattr(annotator, "click_radius", 0.0))  # the server stamps clicks so
        run_config["checkpoint"] = str(run_config.get("checkpoint") or "")
        (path.parent / "run_config.json").write_text(json.dumps(run_config, indent=1, default=str))
    print(f"{report['tuner']} on {report['backbone']}: trainable {report['trainable']:,} of {report['total']:,} "
          f"({100 * report['ratio']:.2f}%)", flush=True)
    return path


def require_datalist(datalist_file: str | os.PathLike, dataset: str, dataset_dir: str | os.PathLike) -> None:
    """Stop a bundle run before any work, with the command that prepares the missing dataset (no traceback)."""
    from medsam_peft.data.datalist import ensure_datalist

    ensure_datalist(datalist_file, dataset, dataset_dir)


def prompt_mode(prepare_batch: Any) -> str:
    """How a run prompted its network, as exported bundles and the label server read it: "interactive" (the
    simulated annotator: boxes and clicks), "box" (the sample's box) or "none" (prompt-free)."""
    from monai.engines.utils import PrepareBatchExtraInput

    from medsam_peft.engines.interactive import InteractivePrepareBatch

    if isinstance(prepare_batch, InteractivePrepareBatch):
        return "interactive"
    return "box" if isinstance(prepare_batch, PrepareBatchExtraInput) else "none"


def prompt_keys(prepare_batch: Any) -> list[str]:
    """The sample keys a ``prepare_batch`` feeds the network as prompts (``["box"]`` for the box prompt)."""
    extra = getattr(prepare_batch, "extra_keys", None)
    if isinstance(extra, dict):
        return [str(v) for v in extra.values()]
    if isinstance(extra, (list, tuple)):
        return [str(v) for v in extra]
    return []


def train_key_metric(num_classes: int | None = None) -> dict[str, Any]:
    """The trainer's running metric: mean Dice of the binary masks, or mIoU of the multi-class label maps."""
    from monai.handlers import MeanDice, from_engine

    from medsam_peft.engines.metrics import SemanticSegmentationMetric

    transform = from_engine(["pred", "label"])
    if num_classes:
        return {"train_miou": SemanticSegmentationMetric(int(num_classes), "miou", output_transform=transform)}
    return {"train_mean_dice": MeanDice(include_background=True, output_transform=transform)}


def semantic_metrics(num_classes: int, class_names: list[str] | None = None, key: bool | str = False,
                     prefix: str = "val", without: str | None = None) -> dict[str, Any]:
    """Multi-class validation metrics (the Trans10K table). ``key``: ``True`` gives ``{prefix_miou}``, a name
    (``val_miou`` / ``val_foreground_miou``) that metric; else pixel accuracy, mIoU, foreground mIoU and one IoU per
    class, named ``prefix_iou_<class name>`` (``class_<i>`` without names), leaving out ``without`` (the key)."""
    from monai.handlers import from_engine

    from medsam_peft.engines.metrics import SEMANTIC_REDUCTIONS, SemanticSegmentationMetric

    transform = from_engine(["pred", "label"])
    if key:
        reduction = "miou" if key is True else str(key).removeprefix(f"{prefix}_")
        if reduction not in SEMANTIC_REDUCTIONS:
            raise ValueError(f"key metric {key!r} is none of {[f'{prefix}_{r}' for r in SEMANTIC_REDUCTIONS]}")
        return {f"{prefix}_{reduction}": SemanticSegmentationMetric(num_classes, reduction, output_transform=transform)}
    names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for num_classes={num_classes}: {names}")
    metrics: dict[str, Any] = {
        f"{prefix}_{reduction}": SemanticSegmentationMetric(num_classes, reduction, output_transform=transform)
        for reduction in ("pixel_accuracy", "miou", "foreground_miou") if f"{prefix}_{reduction}" != without}
    for index, name in enumerate(names):
        metrics[f"{prefix}_iou_{name}"] = SemanticSegmentationMetric(num_classes, index, output_transform=transform)
    return metrics

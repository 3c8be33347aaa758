"""Ignite handlers for tuned SAM training: auxiliary losses, gradient clipping, adapter checkpoints, reports."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines import IterationEvents
from monai.utils import CommonKeys
from PIL import Image

from medsam_peft.tuners.adapter_io import adapter_metadata, adapter_state_dict, apply_adapter_state
from medsam_peft.tuners.base import TunedSam


class AuxLossHandler:
    """Add the tuner's auxiliary loss (Conv-LoRA load balancing, summed over blocks) to the task loss.

    Runs on ``LOSS_COMPLETED``: MONAI's trainer back-propagates ``engine.state.output["loss"]`` after that event,
    so the stock ``SupervisedTrainer`` trains with ``task + aux``. The parts are kept as ``task_loss``/``aux_loss``.
    """

    def __init__(self, network: TunedSam, weight: float = 1.0) -> None:
        self.network = network
        self.weight = weight

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        aux = self.network.aux_loss()
        output = engine.state.output
        output["task_loss"] = output[CommonKeys.LOSS].detach()
        output["aux_loss"] = aux.detach()
        output[CommonKeys.LOSS] = output[CommonKeys.LOSS] + self.weight * aux


class GradientClipHandler:
    """Clip the global gradient norm of the trainable parameters after each backward (reference: 1.0)."""

    def __init__(self, network: torch.nn.Module, max_norm: float = 1.0) -> None:
        self.params = [p for p in network.parameters() if p.requires_grad]
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)


class AdapterState:
    """Checkpoint view of a tuned model: ``state_dict`` holds only the trainable tensors and the tuner metadata.

    Give it to MONAI's ``CheckpointSaver`` / ``CheckpointLoader`` (``save_dict={"model": AdapterState(net)}``) so
    run checkpoints stay a few MB and load with ``weights_only=True``.
    """

    def __init__(self, network: TunedSam) -> None:
        self.network = network

    def state_dict(self) -> dict[str, Any]:
        return {"metadata": adapter_metadata(self.network), "state_dict": adapter_state_dict(self.network)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        apply_adapter_state(self.network, state.get("metadata", {}), state.get("state_dict", {}), "checkpoint")


class MetricProgressReport:
    """Print the key validation metric before training (zero-shot) and after each validation, and the change."""

    def __init__(self, validator: Engine, metric: str, label: str = "", output_file: str | None = None) -> None:
        self.validator = validator
        self.metric = metric
        self.label = label
        self.output_file = output_file
        self.history: list[tuple[int, float]] = []

    def attach(self, trainer: Engine) -> None:
        self.trainer = trainer
        self.validator.add_event_handler(Events.COMPLETED, self._record)
        trainer.add_event_handler(Events.COMPLETED, self._report)

    def _record(self, validator: Engine) -> None:
        value = float(validator.state.metrics[self.metric])
        epoch = self.trainer.state.epoch if self.trainer.state.iteration else 0
        self.history.append((epoch, value))
        tag = "zero-shot (before tuning)" if epoch == 0 else f"after epoch {epoch}"
        print(f"{self.label}{self.metric} {tag}: {value:.4f}", flush=True)

    def _report(self, trainer: Engine) -> None:
        if not self.history:
            return
        (_, first), (last_epoch, last) = self.history[0], self.history[-1]
        line = f"{self.label}{self.metric}: zero-shot {first:.4f} -> tuned {last:.4f} (epoch {last_epoch}, {last - first:+.4f})"
        print(line, flush=True)
        if self.output_file:
            Path(self.output_file).parent.mkdir(parents=True, exist_ok=True)
            Path(self.output_file).write_text(line + "\n")


class OverlayWriter:
    """Save the first ``count`` validation images with ground truth (green) and prediction (red) contours as PNG."""

    def __init__(self, output_dir: str | os.PathLike, count: int = 4) -> None:
        self.output_dir = Path(output_dir)
        self.count = count

    def attach(self, evaluator: Engine) -> None:
        evaluator.add_event_handler(Events.EPOCH_STARTED, self._reset)
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self.written = 0

    def __call__(self, engine: Engine) -> None:
        for item in engine.state.output:
            if self.written >= self.count:
                return
            index = self.written
            self.written += 1
            image = item[CommonKeys.IMAGE].detach().cpu().float()[0].numpy()
            rgb = np.repeat((np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
            for key, colour in ((CommonKeys.LABEL, (0, 255, 0)), (CommonKeys.PRED, (255, 0, 0))):
                mask = item[key].detach().cpu()[0].numpy() > 0.5
                edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
                rgb[edge] = colour
            self.output_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(self.output_dir / f"overlay_{index:02d}.png")

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

from medsam_peft.tuners.adapter_io import ADAPTER_FORMAT, adapter_metadata, adapter_state_dict, apply_adapter_state
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
    """Clip the global gradient norm of the trainable parameters before each optimiser step (reference: 1.0).

    With the trainer's ``accumulation_steps`` > 1 (MONAI ``SupervisedTrainer(accumulation_steps=...)``) it clips
    only the backward that precedes a step, i.e. the accumulated gradient, using the trainer's own step rule.
    """

    def __init__(self, network: torch.nn.Module, max_norm: float = 1.0) -> None:
        self.params = [p for p in network.parameters() if p.requires_grad]
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        steps = getattr(engine, "accumulation_steps", 1)
        if steps > 1:
            local = (engine.state.iteration - 1) % engine.state.epoch_length
            if (local + 1) % steps and local + 1 != engine.state.epoch_length:
                return
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None and scaler.is_enabled():
            # fp16 training (trainer amp=True): gradients are loss-scaled; clip the true ones. The scaler's step
            # then knows they are unscaled already.
            scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)


class AdapterState:
    """Checkpoint view of a tuned model: ``state_dict`` holds only the trainable tensors and the tuner metadata.

    Give it to MONAI's ``CheckpointSaver`` / ``CheckpointLoader`` (``save_dict={"model": AdapterState(net)}``) so
    run checkpoints stay a few MB and load with ``weights_only=True``.
    """

    def __init__(self, network: TunedSam) -> None:
        self.network = network

    def state_dict(self) -> dict[str, Any]:
        # the adapter-file layout, so a best checkpoint is itself a loadable adapter file
        return {"format": ADAPTER_FORMAT, "metadata": adapter_metadata(self.network),
                "state_dict": adapter_state_dict(self.network)}

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

    def state_dict(self) -> dict[str, Any]:
        return {"history": [[float(e), float(v)] for e, v in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [(int(e), float(v)) for e, v in state["history"]]

    def _record(self, validator: Engine) -> None:
        value = float(validator.state.metrics[self.metric])
        epoch = self.trainer.state.epoch if self.trainer.state.iteration else 0
        if self.history and self.history[-1][0] == epoch:
            return  # validation-at-start of a resumed run repeats the last recorded epoch
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


def _numpy_state_to_tensors(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_tensors(state: dict[str, Any]) -> tuple:
    return (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["cached"])


def _randomizable_parts(transform: Any) -> list[Any]:
    """Every object with its own ``R`` (numpy RandomState) inside a (nested) Compose, including wrapped helpers."""
    from monai.transforms import Randomizable

    found, stack = [], [transform]
    while stack:
        item = stack.pop(0)
        if isinstance(item, Randomizable) and hasattr(item, "R"):
            found.append(item)
        stack.extend(getattr(item, "transforms", ()) or ())
        stack.extend(v for v in getattr(item, "__dict__", {}).values() if isinstance(v, Randomizable))
    return found


class RngState:
    """``state_dict``/``load_state_dict`` over every random stream a training epoch draws from: torch (CPU and
    CUDA), NumPy, Python ``random`` and the ``R`` of each random transform of the training preprocessing. Saved as
    tensors and plain numbers so checkpoints load with ``weights_only=True``."""

    def __init__(self, transform: Any = None) -> None:
        self.parts = _randomizable_parts(transform) if transform is not None else []

    def state_dict(self) -> dict[str, Any]:
        import random

        version, internal, gauss = random.getstate()
        state = {"torch": torch.get_rng_state(), "numpy": _numpy_state_to_tensors(np.random.get_state()),
                 "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                            "gauss": gauss},
                 "transforms": [_numpy_state_to_tensors(p.R.get_state()) for p in self.parts]}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import random

        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        np.random.set_state(_numpy_state_from_tensors(state["numpy"]))
        python = state["python"]
        random.setstate((python["version"], tuple(int(v) for v in python["internal"]), python["gauss"]))
        if len(state["transforms"]) != len(self.parts):
            raise ValueError(f"checkpoint holds {len(state['transforms'])} transform random states, the training "
                             f"preprocessing has {len(self.parts)}: it was saved with a different transform chain")
        for part, part_state in zip(self.parts, state["transforms"]):
            part.R.set_state(_numpy_state_from_tensors(part_state))


class ResumeCheckpoint:
    """Write ``path`` atomically after every epoch (adapter tensors, optimiser, scheduler, epoch/iteration, RNG
    streams and any other ``objects``) and, when it exists at start, continue from it: a killed run loses at most
    the epoch in progress.

    Put it first in the trainer's handlers: it loads on ``STARTED`` before validation-at-start, restores the RNG at
    the next ``EPOCH_STARTED`` (after that validation drew from it), and registers its save on ``STARTED`` so that
    it runs after every other end-of-epoch handler (validation, best-checkpoint selection).
    """

    def __init__(self, path: str | os.PathLike, objects: dict[str, Any], enabled: bool = True) -> None:
        self.path = Path(path)
        self.objects = objects
        self.enabled = enabled
        self._pending_rng: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.STARTED, self._start)
            engine.add_event_handler(Events.EPOCH_STARTED, self._restore_rng)

    def _start(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)
        if not self.path.is_file():
            return
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        for name, obj in self.objects.items():
            if name not in state:
                raise ValueError(f"{self.path}: resume checkpoint lacks {name!r}; delete it to start over")
            if name == "rng":
                self._pending_rng = state[name]
            else:
                obj.load_state_dict(state[name])
        engine.state.epoch, engine.state.iteration = int(state["epoch"]), int(state["iteration"])
        print(f"resumed from {self.path} at epoch {engine.state.epoch}", flush=True)

    def _restore_rng(self, engine: Engine) -> None:
        if self._pending_rng is not None:
            self.objects["rng"].load_state_dict(self._pending_rng)
            self._pending_rng = None

    def _save(self, engine: Engine) -> None:
        from medsam_peft.tuners.adapter_io import atomic_torch_save

        state = {name: obj.state_dict() for name, obj in self.objects.items()}
        state.update(epoch=engine.state.epoch, iteration=engine.state.iteration)
        atomic_torch_save(state, self.path)


class ProgressBar:
    """tqdm progress bar over an engine's iterations (ignite's ``ProgressBar``), showing the loss when training."""

    def __init__(self, show_loss: bool = True, description: str = "") -> None:
        from ignite.handlers import ProgressBar as IgniteProgressBar

        self.bar = IgniteProgressBar(persist=False, desc=description)
        self.show_loss = show_loss

    def attach(self, engine: Engine) -> None:
        def transform(output: Any) -> dict[str, float]:
            # after MONAI's postprocessing the output is decollated: a list of per-sample dicts
            first = output[0] if isinstance(output, (list, tuple)) else output
            return {"loss": float(first[CommonKeys.LOSS])}

        self.bar.attach(engine, output_transform=transform if self.show_loss else None)



class EpochSummary:
    """One line per epoch: mean training loss (task and auxiliary parts when present) and the validation metrics.

    The running means are also kept in ``engine.state.metrics`` (``train_loss``, ``train_task_loss``,
    ``train_aux_loss``) so that the tracking handlers log the epoch's mean loss."""

    def __init__(self, validator: Engine | None = None) -> None:
        self.validator = validator

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.STARTED, lambda e: e.add_event_handler(Events.EPOCH_COMPLETED, self._print))

    def _reset(self, engine: Engine) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def _accumulate(self, engine: Engine) -> None:
        self.count += 1
        output = engine.state.output
        output = output[0] if isinstance(output, (list, tuple)) else output  # decollated by postprocessing
        for key in (CommonKeys.LOSS, "task_loss", "aux_loss"):
            if key in output:
                self.sums[key] = self.sums.get(key, 0.0) + float(output[key])
        # running epoch means as engine metrics: MLflow/Stats handlers log them with the epoch's other metrics
        for key, total in self.sums.items():
            engine.state.metrics[f"train_{key}" if key != CommonKeys.LOSS else "train_loss"] = total / self.count

    def _print(self, engine: Engine) -> None:
        parts = [f"epoch {engine.state.epoch}/{engine.state.max_epochs}"]
        parts += [f"{k} {v / max(self.count, 1):.4f}" for k, v in self.sums.items()]
        parts += [f"{k} {v:.4f}" for k, v in engine.state.metrics.items() if k.startswith("train_") and "loss" not in k]
        if self.validator is not None and self.validator.state.metrics:
            parts += [f"{k} {v:.4f}" for k, v in self.validator.state.metrics.items() if isinstance(v, float)]
        print("  ".join(parts), flush=True)

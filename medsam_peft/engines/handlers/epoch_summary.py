"""One line per epoch: mean training loss (and its parts), training throughput and the validation metrics."""

from __future__ import annotations

import time

from ignite.engine import Engine, Events
from monai.utils import CommonKeys

from medsam_peft.utils.distributed import is_main_process, world_size


class EpochSummary:
    """One line per epoch: mean training loss (task and auxiliary parts when present), training images per second
    (all ranks together: this rank's samples x world size, shards being even; validation time excluded) and the
    validation metrics. In a distributed run rank 0 prints and its losses are those of its shard.

    The running means are also kept in ``engine.state.metrics`` (``train_loss``, ``train_task_loss``,
    ``train_aux_loss``) so that the tracking handlers log the epoch's mean loss."""

    def __init__(self, validator: Engine | None = None) -> None:
        self.validator = validator

    def attach(self, engine: Engine) -> None:
        if not is_main_process():  # rank 0 speaks for the job (the metrics it prints are gathered over ranks)
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.STARTED, lambda e: e.add_event_handler(Events.EPOCH_COMPLETED, self._print))

    def _reset(self, engine: Engine) -> None:
        self.sums: dict[str, float] = {}
        self.count = self.samples = 0
        self.started = self.last = time.perf_counter()

    def _accumulate(self, engine: Engine) -> None:
        self.count += 1
        batch = engine.state.batch
        images = batch.get(CommonKeys.IMAGE) if isinstance(batch, dict) else None
        self.samples += int(images.shape[0]) if images is not None else 1
        self.last = time.perf_counter()
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
        if self.last > self.started:
            parts.append(f"images/s {self.samples * world_size() / (self.last - self.started):.2f}")
        if self.validator is not None and self.validator.state.metrics:
            parts += [f"{k} {v:.4f}" for k, v in self.validator.state.metrics.items() if isinstance(v, float)]
        print("  ".join(parts), flush=True)

"""Prints the key validation metric before training (zero-shot) and after each validation, and the change."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine, Events

from medsam_peft.utils.atomic_io import atomic_write_bytes
from medsam_peft.utils.distributed import is_main_process


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
        if not is_main_process():  # the history still resumes on every rank (it is in the resume checkpoint)
            return
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
            atomic_write_bytes(self.output_file, (line + "\n").encode())

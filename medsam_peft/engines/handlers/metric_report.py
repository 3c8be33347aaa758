"""Prints the key validation metric before training (zero-shot) and after each validation, and the change."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine, Events

from medsam_peft.utils.atomic_io import atomic_write_bytes
from medsam_peft.utils.distributed import is_main_process


class MetricProgressReport:
    """Print the key validation metric before training (zero-shot) and after each validation, and the change."""

    def __init__(self, validator: Engine, metric: str, label: str = "", output_file: str | None = None,
                 also: list[str] | tuple[str, ...] = (), lower_is_better: bool = False) -> None:
        self.validator = validator
        self.lower_is_better = lower_is_better  # as BestAdapterCheckpoint judges the key metric
        self.metric = metric
        self.label = label
        self.output_file = output_file
        # Other validation metrics reported the same way after the key metric (the click protocol's Dice@k...).
        self.also = [name for name in also if name != metric]
        self.history: list[tuple[int, float]] = []
        self.also_history: dict[str, list[tuple[int, float]]] = {name: [] for name in self.also}

    def attach(self, trainer: Engine) -> None:
        self.trainer = trainer
        if not is_main_process():  # the history still resumes on every rank (it is in the resume checkpoint)
            return
        self.validator.add_event_handler(Events.COMPLETED, self._record)
        trainer.add_event_handler(Events.COMPLETED, self._report)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [[float(e), float(v)] for e, v in self.history],
                "also_history": {k: [[float(e), float(v)] for e, v in h] for k, h in self.also_history.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [(int(e), float(v)) for e, v in state["history"]]
        saved = state.get("also_history", {})  # absent in checkpoints written before it existed
        self.also_history = {k: [(int(e), float(v)) for e, v in saved.get(k, [])] for k in self.also}

    def _record(self, validator: Engine) -> None:
        value = float(validator.state.metrics[self.metric])
        epoch = self.trainer.state.epoch if self.trainer.state.iteration else 0
        if self.history and self.history[-1][0] == epoch:
            return  # validation-at-start of a resumed run repeats the last recorded epoch
        self.history.append((epoch, value))
        tag = "zero-shot (before tuning)" if epoch == 0 else f"after epoch {epoch}"
        print(f"{self.label}{self.metric} {tag}: {value:.4f}", flush=True)
        for name in self.also:
            if name in validator.state.metrics:
                self.also_history[name].append((epoch, float(validator.state.metrics[name])))
        if self.also:
            print(f"{self.label}  also: " + "  ".join(f"{name} {h[-1][1]:.4f}" for name, h in self.also_history.items()
                                                      if h), flush=True)

    def _report(self, trainer: Engine) -> None:
        if not self.history:
            return
        (_, first), (last_epoch, last) = self.history[0], self.history[-1]
        lines = [f"{self.label}{self.metric}: zero-shot {first:.4f} -> tuned {last:.4f} (epoch {last_epoch}, "
                 f"{last - first:+.4f})"]
        # The other metrics at the same two validations: before tuning and the epoch the key metric was last read.
        for name, history in self.also_history.items():
            values = dict(history)
            if 0 in values and last_epoch in values:
                before, after = values[0], values[last_epoch]
                lines.append(f"{self.label}{name}: zero-shot {before:.4f} -> tuned {after:.4f} (epoch {last_epoch}, "
                             f"{after - before:+.4f})")
        # "tuned" is the last validation; checkpoints/adapter_best.safetensors (what predict and export-bundle take
        # from a run folder) holds the best one, which a user must see when it is another epoch
        pick = min if self.lower_is_better else max
        best_epoch, best = pick(self.history, key=lambda item: item[1])
        if best_epoch != last_epoch and best != last:
            lines.append(f"{self.label}{self.metric}: best {best:.4f} at epoch {best_epoch} "
                         "(checkpoints/adapter_best.safetensors, what predict and export-bundle use)")
        print("\n".join(lines), flush=True)
        if self.output_file:
            atomic_write_bytes(self.output_file, ("\n".join(lines) + "\n").encode())

"""Keeps the adapter of the best validation so far, resumably."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from medsam_peft.tuners.adapter_io import adapter_payload, write_adapter_payload
from medsam_peft.tuners.base import TunedSam

logger = logging.getLogger(__name__)


class BestAdapterCheckpoint:
    """Write the adapter file ``path`` (trainable tensors + metadata, loadable by ``load_tuned_sam``) whenever the
    evaluator's ``metric`` improves.

    Unlike MONAI's ``CheckpointSaver`` it is part of the resume state (``state_dict``): a resumed run compares with
    the best score of the epochs before the interruption instead of overwriting the best file with whatever its first
    validation gives; and it writes atomically (safetensors for a ``.safetensors`` path; a full disk is reported naming the folder).
    ``save=False`` keeps the score without writing (the non-zero ranks of a distributed run).
    """

    def __init__(self, network: TunedSam, path: str | os.PathLike, metric: str, lower_is_better: bool = False,
                 save: bool = True) -> None:
        self.network = network
        self.path = Path(path)
        self.metric = metric
        self.lower_is_better = lower_is_better
        self.save = save
        self.best: float | None = None
        self.best_epoch = -1

    def attach(self, evaluator: Engine) -> None:
        evaluator.add_event_handler(Events.COMPLETED, self)

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.lower_is_better else value > self.best

    def __call__(self, evaluator: Engine) -> None:
        value = float(evaluator.state.metrics[self.metric])
        if not self.improved(value):
            return
        self.best, self.best_epoch = value, int(evaluator.state.epoch)
        if self.save:
            payload = adapter_payload(self.network)
            # the file documents its own score: export-bundle reports it when no evaluation run was made
            payload["metadata"]["validation"] = {
                "epoch": self.best_epoch,
                "metrics": {k: float(v) for k, v in evaluator.state.metrics.items() if isinstance(v, (int, float))},
            }
            write_adapter_payload(payload, self.path)
        logger.info("new best %s %.4f (epoch %d): %s", self.metric, value, self.best_epoch, self.path)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = None if state.get("best") is None else float(state["best"])
        self.best_epoch = int(state.get("best_epoch", -1))

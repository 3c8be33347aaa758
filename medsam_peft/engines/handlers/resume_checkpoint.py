"""Writes a resume checkpoint after every epoch and continues from it when a run is started again."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from medsam_peft.errors import MedsamPeftError
from medsam_peft.models.checkpoint import CheckpointError
from medsam_peft.utils.atomic_io import atomic_torch_save, remove_stale_temporaries
from medsam_peft.utils.distributed import rank, world_size

logger = logging.getLogger(__name__)

_START_OVER = "delete it, or start over with --resume False"


class ResumeCheckpoint:
    """Write ``path`` atomically after every epoch (adapter tensors, optimiser, scheduler, epoch/iteration, RNG
    streams and any other ``objects``) and, when it exists at start, continue from it: a killed run loses at most
    the epoch in progress.

    Put it first in the trainer's handlers: it loads on ``STARTED`` before validation-at-start, restores the RNG at
    the next ``EPOCH_STARTED`` (after that validation drew from it), and registers its save on ``STARTED`` so that
    it runs after every other end-of-epoch handler (validation, best-checkpoint selection).

    With ``enabled=False`` an existing file is ignored (and overwritten after the first epoch): a fresh start.
    Temporaries that a killed save left beside ``path`` are removed at start (the run holds its output folder).
    ``save`` decides whether this process writes (e.g. only rank 0 of a distributed run).
    """

    def __init__(self, path: str | os.PathLike, objects: dict[str, Any], enabled: bool = True, save: bool = True) -> None:
        self.path = Path(path)
        self.objects = objects
        self.enabled = enabled
        self.save = save
        self._pending_rng: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_STARTED, self._restore_rng)

    def _read(self) -> dict[str, Any]:
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated zip, foreign pickle, a directory...: torch raises many types
            raise CheckpointError(f"resume checkpoint {self.path} cannot be read ({type(err).__name__}); it is "
                                  f"truncated or not written by medsam_peft: {_START_OVER}") from err
        required = [name for name in ("model", "optimizer") if name in self.objects] + ["epoch", "iteration"]
        missing = [name for name in required if not isinstance(state, dict) or name not in state]
        if missing:
            raise CheckpointError(f"resume checkpoint {self.path} lacks {missing[0]!r}: it was written by another "
                                  f"workflow or version; {_START_OVER}")
        return state

    def _start(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)
        if self.save:
            for stale in remove_stale_temporaries(self.path):
                logger.warning("removed %s, left by an interrupted checkpoint write", stale)
        if not self.enabled or not self.path.is_file():
            return
        state = self._read()
        for name, obj in self.objects.items():
            if name not in state:  # a part added after this file was written (e.g. the best score): left fresh
                logger.warning("%s holds no %r state; starting it fresh", self.path, name)
                continue
            if name == "rng":
                # the file holds rank 0's streams; other ranks keep their own (seed + rank), not a copy of rank 0's
                self._pending_rng = state[name] if rank() == 0 else None
                continue
            try:
                obj.load_state_dict(state[name])
            except (MedsamPeftError, ValueError, KeyError, RuntimeError) as err:
                # the first mismatch says enough ("tuner 'conv_lora' in the file vs 'lora' in the model")
                first = str(err).splitlines()[0].split(" does not fit this model: ", 1)[-1].split("; ")[0][:200]
                raise CheckpointError(f"resume checkpoint {self.path} was written by a run with other settings "
                                      f"({name}: {first}): {_START_OVER}") from err
        engine.state.epoch, engine.state.iteration = int(state["epoch"]), int(state["iteration"])
        saved_world = int(state.get("world_size", 1))
        if saved_world != world_size():
            self._rescale_to_this_world(engine, saved_world)
        if engine.state.epoch >= engine.state.max_epochs:
            logger.warning("%s holds a finished run (epoch %d of max_epochs %d): nothing left to train",
                           self.path, engine.state.epoch, engine.state.max_epochs)
        print(f"resumed from {self.path} at epoch {engine.state.epoch}", flush=True)

    def _rescale_to_this_world(self, engine: Engine, saved_world: int) -> None:
        """A run started on N processes continues on M (the rule in the README): progress is counted in completed
        epochs, so the iteration counter and any per-iteration scheduler restart at ``epoch x`` this run's epoch
        length (the learning rate continues from the same fraction of training). Random streams are per rank and
        are seeded afresh rather than taken from another world's rank 0."""
        previous = engine.state.iteration
        engine.state.iteration = engine.state.epoch * int(engine.state.epoch_length or 0)
        scheduler = self.objects.get("lr_scheduler")
        if scheduler is not None and hasattr(scheduler, "last_epoch") and previous:
            scheduler.last_epoch = engine.state.iteration
            for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_lr()):
                group["lr"] = lr
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
        self._pending_rng = None
        print(f"{self.path} was written by a run on {saved_world} process(es); continuing on {world_size()} from "
              f"epoch {engine.state.epoch} (iteration {previous} -> {engine.state.iteration})", flush=True)

    def _restore_rng(self, engine: Engine) -> None:
        if self._pending_rng is not None:
            try:
                self.objects["rng"].load_state_dict(self._pending_rng)
            except (ValueError, KeyError, TypeError) as err:
                raise CheckpointError(f"resume checkpoint {self.path}: its random states do not fit this run ({err}); "
                                      f"{_START_OVER}") from err
            self._pending_rng = None

    def _save(self, engine: Engine) -> None:
        if not self.save:
            return
        state = {name: obj.state_dict() for name, obj in self.objects.items()}
        state.update(epoch=engine.state.epoch, iteration=engine.state.iteration, world_size=world_size())
        atomic_torch_save(state, self.path)

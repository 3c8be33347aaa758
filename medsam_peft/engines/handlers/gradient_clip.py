"""Clips the global gradient norm of the trainable parameters before each optimiser step."""

from __future__ import annotations

import torch
from ignite.engine import Engine
from monai.engines import IterationEvents


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

"""Adds the tuner's auxiliary loss (Conv-LoRA's load balancing) to the trainer's loss."""

from __future__ import annotations

from ignite.engine import Engine
from monai.engines import IterationEvents
from monai.utils import CommonKeys

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

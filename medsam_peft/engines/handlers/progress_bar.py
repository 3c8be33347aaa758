"""A tqdm progress bar over an engine's iterations."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine
from monai.utils import CommonKeys

from medsam_peft.utils.distributed import is_main_process
from medsam_peft.utils.user_errors import quiet_engine_logger


class ProgressBar:
    """tqdm progress bar over an engine's iterations (ignite's ``ProgressBar``), showing the loss when training."""

    def __init__(self, show_loss: bool = True, description: str = "") -> None:
        from ignite.handlers import ProgressBar as IgniteProgressBar

        self.bar = IgniteProgressBar(persist=False, desc=description)
        self.show_loss = show_loss

    def attach(self, engine: Engine) -> None:
        if not is_main_process():  # one bar per job, not one per rank
            return
        quiet_engine_logger(engine)  # the bar owns this engine's console: one error line, not a log per engine

        def transform(output: Any) -> dict[str, float]:
            # after MONAI's postprocessing the output is decollated: a list of per-sample dicts
            first = output[0] if isinstance(output, (list, tuple)) else output
            return {"loss": float(first[CommonKeys.LOSS])}

        self.bar.attach(engine, output_transform=transform if self.show_loss else None)

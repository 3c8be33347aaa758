"""Saves validation images with ground-truth and predicted contours."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from ignite.engine import Engine, Events
from monai.utils import CommonKeys
from PIL import Image

from medsam_peft.utils.atomic_io import atomic_write_bytes
from medsam_peft.utils.distributed import is_main_process


class OverlayWriter:
    """Save the first ``count`` validation images with ground truth (green) and prediction (red) contours as PNG."""

    def __init__(self, output_dir: str | os.PathLike, count: int = 4) -> None:
        self.output_dir = Path(output_dir)
        self.count = count

    def attach(self, evaluator: Engine) -> None:
        if not is_main_process():  # one set of files: rank 0 draws the first images of its shard
            return
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
            buffer = io.BytesIO()
            Image.fromarray(rgb).save(buffer, format="PNG")
            atomic_write_bytes(self.output_dir / f"overlay_{index:02d}.png", buffer.getvalue())

"""Prompts drawn from a mask: jittered boxes and foreground/background clicks (array transforms)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from monai.transforms import Randomizable, Transform

logger = logging.getLogger(__name__)


class RandBoxFromMask(Randomizable, Transform):
    """XYXY box around the foreground of a (1, H, W) mask, each side enlarged by a random 0..``max_jitter`` pixels.

    Coordinates are inclusive pixel indices (MedSAM / SAM-PARSER convention), clipped to the image. Each side is
    enlarged independently (``np.random.randint(0, max_jitter + 1)``). An empty mask has no box: the whole image is
    returned and counted in ``empty_count`` (logged), so a run never stops on one bad sample.
    """

    def __init__(self, max_jitter: int = 20) -> None:
        if max_jitter < 0:
            raise ValueError(f"max_jitter must be >= 0, got {max_jitter}")
        self.max_jitter = int(max_jitter)
        self.empty_count = 0
        self._jitter = np.zeros(4, dtype=np.int64)

    def randomize(self, data: object = None) -> None:
        self._jitter = self.R.randint(0, self.max_jitter + 1, size=4)

    def __call__(self, mask: torch.Tensor, name: str = "") -> torch.Tensor:
        mask = torch.as_tensor(mask)
        height, width = mask.shape[-2:]
        ys, xs = torch.nonzero(mask.reshape(height, width) > 0, as_tuple=True)
        if ys.numel() == 0:
            self.empty_count += 1
            logger.warning("empty mask%s: no box can be drawn, using the whole image (%d so far)",
                           f" in {name}" if name else "", self.empty_count)
            return torch.tensor([0.0, 0.0, width - 1.0, height - 1.0])
        self.randomize()
        j = self._jitter
        return torch.tensor([
            max(int(xs.min()) - j[0], 0), max(int(ys.min()) - j[1], 0),
            min(int(xs.max()) + j[2], width - 1), min(int(ys.max()) + j[3], height - 1),
        ], dtype=torch.float32)

class RandPointsFromMask(Randomizable, Transform):
    """Sample point prompts from a (1, H, W) mask: ``num_positive`` foreground and ``num_negative`` background
    pixels, uniformly, as (N, 2) XY coordinates and (N,) labels (1 = foreground, 0 = background), SAM's format.

    An empty mask gives background points only (and is counted in ``empty_count``); a full mask gives foreground
    points only. Sampling is with replacement when a region has fewer pixels than requested, so N is constant and
    samples batch.
    """

    def __init__(self, num_positive: int = 1, num_negative: int = 0) -> None:
        if num_positive < 0 or num_negative < 0 or num_positive + num_negative == 0:
            raise ValueError(f"need at least one point, got num_positive={num_positive}, num_negative={num_negative}")
        self.num_positive, self.num_negative = int(num_positive), int(num_negative)
        self.empty_count = 0

    def randomize(self, data: object = None) -> None:  # sampling happens in __call__ from self.R
        pass

    def _pick(self, coords: torch.Tensor, count: int) -> torch.Tensor:
        idx = self.R.randint(0, coords.shape[0], size=count)
        return coords[torch.as_tensor(idx)]

    def __call__(self, mask: torch.Tensor, name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.as_tensor(mask)
        plane = mask.reshape(mask.shape[-2:]) > 0
        fg, bg = torch.nonzero(plane).flip(1), torch.nonzero(~plane).flip(1)  # (row, col) -> (x, y)
        n_pos, n_neg = self.num_positive, self.num_negative
        if fg.shape[0] == 0:
            self.empty_count += 1
            logger.warning("empty mask%s: background points only (%d so far)", f" in {name}" if name else "",
                           self.empty_count)
            n_pos, n_neg = 0, n_pos + n_neg
        elif bg.shape[0] == 0:
            n_pos, n_neg = n_pos + n_neg, 0
        points = [self._pick(fg, n_pos)] if n_pos else []
        points += [self._pick(bg, n_neg)] if n_neg else []
        labels = torch.cat([torch.ones(n_pos), torch.zeros(n_neg)])
        return torch.cat(points).float(), labels


# The names before the array/dictionary pairs were aligned (MONAI: RandFlip / RandFlipd).
BoxFromMask = RandBoxFromMask
PointsFromMask = RandPointsFromMask

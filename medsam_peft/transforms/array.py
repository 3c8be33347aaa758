"""Array transforms that turn images and masks into what a SAM-family model eats (tensor in, tensor out)."""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Randomizable, Transform

logger = logging.getLogger(__name__)


def _interpolate(img: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize a (C, H, W) tensor as float; align_corners only where the mode takes it."""
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(img[None].float(), size=size, mode=mode, **kwargs)[0]


class ScaleIntensityByDtype(Transform):
    """Scale intensities to [0, 1] by the range of the file's pixel type: ``x / intensity_max`` (clipped), with
    ``intensity_max`` from the ``MetaTensor``'s meta (``LoadImage2D`` records 255 for 8-bit, 65535 for 16-bit files)
    or ``default_max`` for plain tensors. The same picture saved as 8- or 16-bit gives the same input (a fixed
    0..255 window would saturate a 16-bit image)."""

    def __init__(self, default_max: float = 255.0) -> None:
        self.default_max = float(default_max)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        meta = getattr(img, "meta", None) or {}
        maximum = float(meta.get("intensity_max", self.default_max))
        if maximum <= 0:
            raise ValueError(f"intensity_max must be positive, got {maximum}")
        out = torch.clamp(torch.as_tensor(img).float() / maximum, 0.0, 1.0)
        if hasattr(img, "meta"):  # keep the MetaTensor (file name, spacing) for later transforms and writers
            out = img.__class__(out, meta=dict(img.meta))
        return out


class ResizeLongestSide(Transform):
    """Resize a (C, H, W) image so its longest side is ``size``, then zero-pad bottom/right to ``size`` x ``size``.

    This is SAM's ``ResizeLongestSide`` + ``Sam.preprocess`` padding. Use ``mode="nearest-exact"`` for masks: then
    ``RestoreOriginalSize`` inverts it exactly whenever the image was enlarged (or kept) in size.

    Args:
        size: target side length (the model's ``image_size``).
        mode: ``torch.nn.functional.interpolate`` mode.
        squash: resize both sides to ``size`` without keeping the aspect ratio or padding (the Conv-LoRA reference).
    """

    def __init__(self, size: int, mode: str = "bilinear", squash: bool = False) -> None:
        self.size = int(size)
        self.mode = mode
        self.squash = squash

    def scaled_size(self, original: tuple[int, int]) -> tuple[int, int]:
        if self.squash:
            return self.size, self.size
        scale = self.size / max(original)
        return int(round(original[0] * scale)), int(round(original[1] * scale))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        img = torch.as_tensor(img)
        if img.ndim != 3:
            raise ValueError(f"ResizeLongestSide expects (C, H, W), got shape {tuple(img.shape)}")
        new_h, new_w = self.scaled_size((img.shape[1], img.shape[2]))
        out = _interpolate(img, (new_h, new_w), self.mode)
        return F.pad(out, (0, self.size - new_w, 0, self.size - new_h)).to(img.dtype if img.is_floating_point() else out.dtype)


class RestoreOriginalSize(Transform):
    """Inverse of ``ResizeLongestSide``: crop the unpadded region and resize it back to ``original_size``."""

    def __init__(self, size: int, mode: str = "nearest-exact", squash: bool = False) -> None:
        self.forward = ResizeLongestSide(size, mode, squash)

    def __call__(self, img: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        img = torch.as_tensor(img)
        h, w = self.forward.scaled_size((int(original_size[0]), int(original_size[1])))
        size = (int(original_size[0]), int(original_size[1]))
        return _interpolate(img[:, :h, :w], size, self.forward.mode)


class BoxFromMask(Randomizable, Transform):
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


class PointsFromMask(Randomizable, Transform):
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


class SemanticFromQueries(Transform):
    """Per-class probabilities (C, H, W) from one item of the multi-class decoder's output.

    ``semseg[c] = sum_q softmax(classes_q)[c] * sigmoid(masks_q)`` over the queries, the "no object" column dropped
    (the Conv-LoRA reference's ``apply_multi_class_semantic_seg_postprocess``); ``argmax`` over ``c`` gives labels.
    """

    def __call__(self, pred: dict[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(pred, dict) or not {"masks", "classes"} <= set(pred):
            raise ValueError("SemanticFromQueries expects the multi-class decoder's {'masks', 'classes'} output")
        classes = torch.as_tensor(pred["classes"]).float().softmax(-1)[..., :-1]  # (Q, C)
        masks = torch.as_tensor(pred["masks"]).float().sigmoid()  # (Q, H, W)
        return torch.einsum("qc,qhw->chw", classes, masks)

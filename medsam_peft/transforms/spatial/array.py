"""SAM's resize-and-pad of a (C, H, W) image and its exact inverse; boxes mapped into the model frame."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import InvertibleTransform, Transform
from monai.utils import TraceKeys


def _interpolate(img: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize a (C, H, W) tensor as float; align_corners only where the mode takes it."""
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(img[None].float(), size=size, mode=mode, **kwargs)[0]

class ResizeLongestSide(InvertibleTransform):
    """Resize a (C, H, W) image so its longest side is ``size``, then zero-pad bottom/right to ``size`` x ``size``.

    This is SAM's ``ResizeLongestSide`` + ``Sam.preprocess`` padding. Use ``mode="nearest-exact"`` for masks: then
    ``RestoreOriginalSize`` inverts it exactly whenever the image was enlarged (or kept) in size. On a ``MetaTensor``
    the original size is recorded in its applied operations, so ``inverse`` (and MONAI's ``Invertd`` on a
    prediction) restores it.

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
        original = img
        img = torch.as_tensor(img)
        if img.ndim != 3:
            raise ValueError(f"ResizeLongestSide expects (C, H, W), got shape {tuple(img.shape)}")
        new_h, new_w = self.scaled_size((img.shape[1], img.shape[2]))
        out = _interpolate(img.as_tensor() if isinstance(img, MetaTensor) else img, (new_h, new_w), self.mode)
        out = F.pad(out, (0, self.size - new_w, 0, self.size - new_h)).to(
            img.dtype if img.is_floating_point() else out.dtype)
        if isinstance(original, MetaTensor) and get_track_meta():
            out = MetaTensor(out, meta=dict(original.meta), applied_operations=list(original.applied_operations))
            self.push_transform(out, orig_size=tuple(int(s) for s in img.shape[1:]),
                                extra_info={"mode": self.mode, "squash": self.squash, "size": self.size})
        return out

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        """Undo the resize recorded on ``data`` (a ``MetaTensor`` this transform, or a copy of its trace, went
        through): crop the padding and resize back with the recorded mode (``nearest`` after ``Invertd``'s
        ``nearest_interp``)."""
        transform = self.pop_transform(data)
        info = transform[TraceKeys.EXTRA_INFO]
        restored = RestoreOriginalSize(info["size"], info["mode"], info["squash"])(
            data.as_tensor() if isinstance(data, MetaTensor) else data, transform[TraceKeys.ORIG_SIZE])
        if isinstance(data, MetaTensor):
            return MetaTensor(restored, meta=dict(data.meta), applied_operations=list(data.applied_operations))
        return restored


class RestoreOriginalSize(Transform):
    """Inverse of ``ResizeLongestSide``: crop the unpadded region and resize it back to ``original_size``."""

    def __init__(self, size: int, mode: str = "nearest-exact", squash: bool = False) -> None:
        self.forward = ResizeLongestSide(size, mode, squash)

    def __call__(self, img: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        img = torch.as_tensor(img)
        h, w = self.forward.scaled_size((int(original_size[0]), int(original_size[1])))
        size = (int(original_size[0]), int(original_size[1]))
        return _interpolate(img[:, :h, :w], size, self.forward.mode)


class ScaleBox(Transform):
    """Map an XYXY box given in original-image pixels into the resized/padded model frame of ``ResizeLongestSide``
    (``size``, ``squash``); boxes in the model frame are what SAM takes. A box that is not a non-empty box inside
    the ``original_size`` (H, W) image raises, naming it."""

    def __init__(self, size: int = 1024, squash: bool = False) -> None:
        self.resizer = ResizeLongestSide(size, squash=squash)

    def scale_factors(self, original_size: Sequence[int]) -> tuple[float, float]:
        """(x, y) factors from original-image pixels to the model frame (for points as well as boxes)."""
        height, width = (int(s) for s in original_size)
        new_h, new_w = self.resizer.scaled_size((height, width))
        return new_w / width, new_h / height

    def __call__(self, box: torch.Tensor | Sequence[float], original_size: Sequence[int]) -> torch.Tensor:
        height, width = (int(s) for s in original_size)
        box = torch.as_tensor(box, dtype=torch.float32).reshape(4)
        if not (0 <= box[0] < box[2] < width + 1 and 0 <= box[1] < box[3] < height + 1):
            raise ValueError(f"box {box.tolist()} is not a non-empty XYXY box inside the {width}x{height} image")
        return box * torch.tensor(self.scale_factors(original_size) * 2)

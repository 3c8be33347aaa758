"""Intensity scaling of 2-D files to the [0, 1] the models take (array transforms)."""

from __future__ import annotations

import torch
from monai.transforms import Transform


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

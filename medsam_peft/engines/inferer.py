"""Inferers that bring the prompt keys to the network and run it under autocast on any device."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer


class AutocastInferer(Inferer):
    """Call the network under ``torch.autocast`` for the inputs' device and return float32 outputs.

    MONAI's engines only autocast on CUDA (``amp=True``); bf16 autocast also doubles matmul speed on recent CPUs.
    Losses and metrics then see float32 logits.

    Args:
        dtype: ``"bfloat16"`` (default), ``"float16"`` or ``"float32"`` (no autocast).
    """

    def __init__(self, dtype: str = "bfloat16") -> None:
        if dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"dtype must be bfloat16, float16 or float32, got {dtype!r}")
        self.dtype = getattr(torch, dtype)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        enabled = self.dtype != torch.float32
        with torch.autocast(device_type=inputs.device.type, dtype=self.dtype, enabled=enabled):
            out = network(inputs, *args, **kwargs)
        if isinstance(out, dict):  # the multi-class decoder's {"masks", "classes"}
            return {key: value.float() for key, value in out.items()}
        return out.float()

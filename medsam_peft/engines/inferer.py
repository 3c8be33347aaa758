"""Inferers that bring the prompt keys to the network and run it under autocast on any device."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer

from medsam_peft.errors import ConfigError
from medsam_peft.utils.precision import PRECISIONS, resolve_precision


class AutocastInferer(Inferer):
    """Call the network under ``torch.autocast`` for the inputs' device and return float32 outputs.

    MONAI's engines only autocast on CUDA (``amp=True``); bf16 autocast also halves matmul time on CPUs with native
    bf16. Losses and metrics then see float32 logits.

    Args:
        dtype: ``"auto"`` (per device, see ``medsam_peft.utils.precision``), ``"bfloat16"``, ``"float16"`` or
            ``"float32"`` (no autocast).
    """

    def __init__(self, dtype: str = "auto") -> None:
        if dtype not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {dtype!r}")
        self.precision = dtype

    def dtype_for(self, device: torch.device) -> torch.dtype:
        return getattr(torch, resolve_precision(self.precision, device))

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        dtype = self.dtype_for(inputs.device)
        with torch.autocast(device_type=inputs.device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = network(inputs, *args, **kwargs)
        if isinstance(out, dict):  # the multi-class decoder's {"masks", "classes"}
            return {key: value.float() for key, value in out.items()}
        return out.float()

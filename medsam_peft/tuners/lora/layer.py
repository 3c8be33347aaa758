from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsam_peft.tuners.base import BaseTunerLayer


def low_rank_factors(base_layer: nn.Linear, r: int, init_weights: bool = True) -> tuple[nn.Parameter, nn.Parameter]:
    """LoRA's A (r x in, Kaiming-uniform as nn.Linear) and B (out x r, zeros so the update starts at zero)."""
    factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
    a = nn.Parameter(torch.empty(r, base_layer.in_features, **factory))
    b = nn.Parameter(torch.empty(base_layer.out_features, r, **factory))
    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    if init_weights:
        nn.init.zeros_(b)
    else:
        nn.init.normal_(b, std=0.02)
    return a, b


class LoraLinear(nn.Module, BaseTunerLayer):
    """``y = W x + b + (alpha / r) * B A dropout(x)`` around a frozen ``nn.Linear``; any number of leading dims."""

    supports_merge = True

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0, init_weights: bool = True):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoRA targets nn.Linear layers, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.r = int(r)
        self.scaling = float(alpha) / self.r
        self.lora_A, self.lora_B = low_rank_factors(base_layer, self.r, init_weights)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return out + self.scaling * update

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsam_peft.tuners.base import BaseTunerLayer


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
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(self.r, base_layer.in_features, **factory))
        self.lora_B = nn.Parameter(torch.empty(base_layer.out_features, self.r, **factory))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_lora_parameters(init_weights)

    def reset_lora_parameters(self, init_weights: bool = True) -> None:
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        if init_weights:
            nn.init.zeros_(self.lora_B)  # the update starts at zero: the tuned model equals the base model
        else:
            nn.init.normal_(self.lora_B, std=0.02)

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return out + self.scaling * update

from __future__ import annotations

import torch
import torch.nn as nn

from medsam_peft.tuners.base import BaseTunerLayer


def output_width(module: nn.Module) -> int:
    """Channels of a SAM/TinyViT attention or MLP output: the out_features of its last Linear layer."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"{type(module).__name__} has no nn.Linear layer to size an adapter from")
    return linears[-1].out_features


class BottleneckAdapter(nn.Module, BaseTunerLayer):
    """``y = f(x); y + up(act(down(y)))`` around a frozen sub-layer ``f`` whose output has channels last."""

    merge_unsupported_reason = "the adapter's non-linearity cannot be folded into a weight"

    def __init__(self, base_layer: nn.Module, bottleneck: int, activation: str = "gelu", init_weights: bool = True):
        super().__init__()
        self.base_layer = base_layer
        width = output_width(base_layer)
        factory = {"device": next(base_layer.parameters()).device, "dtype": next(base_layer.parameters()).dtype}
        self.adapter_down = nn.Linear(width, int(bottleneck), **factory)
        self.adapter_act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.adapter_up = nn.Linear(int(bottleneck), width, **factory)
        if init_weights:
            nn.init.zeros_(self.adapter_up.weight)
            nn.init.zeros_(self.adapter_up.bias)

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(*args, **kwargs)
        return out + self.adapter_up(self.adapter_act(self.adapter_down(out)))

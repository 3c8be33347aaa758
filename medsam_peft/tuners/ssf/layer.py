from __future__ import annotations

import torch
import torch.nn as nn
from segment_anything.modeling.common import LayerNorm2d

from medsam_peft.tuners.base import BaseTunerLayer

# Layers whose output channels are last (Linear, LayerNorm) or at dim 1 (Conv2d, LayerNorm2d).
_CHANNELS_LAST = (nn.Linear, nn.LayerNorm)
_CHANNELS_FIRST = (nn.Conv2d, LayerNorm2d)


def _channels_first(layer: nn.Module) -> bool:
    # LiteMedSAM's TinyViT ships its own copy of SAM's LayerNorm2d class.
    return isinstance(layer, _CHANNELS_FIRST) or type(layer).__name__ == "LayerNorm2d"


class ScaleShiftLayer(nn.Module, BaseTunerLayer):
    """``base(x) * ssf_scale + ssf_shift`` per output channel of a frozen Linear, LayerNorm, Conv2d or LayerNorm2d."""

    supports_merge = True

    def __init__(self, base_layer: nn.Module, init_weights: bool = True) -> None:
        super().__init__()
        if not (isinstance(base_layer, _CHANNELS_LAST) or _channels_first(base_layer)):
            raise TypeError(f"SSF follows Linear, LayerNorm, Conv2d or LayerNorm2d layers, got {type(base_layer).__name__}")
        if base_layer.weight is None:
            raise TypeError(f"SSF needs an affine {type(base_layer).__name__} (its weight carries the merged scale)")
        self.base_layer = base_layer
        self.channel_dim = 1 if _channels_first(base_layer) else -1
        channels = base_layer.weight.shape[0]
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.ssf_scale = nn.Parameter(torch.ones(channels, **factory))
        self.ssf_shift = nn.Parameter(torch.zeros(channels, **factory))
        if not init_weights:
            nn.init.normal_(self.ssf_scale, 1.0, 0.1)
            nn.init.normal_(self.ssf_shift, 0.0, 0.1)

    def _per_channel(self, vector: torch.Tensor, ndim: int) -> torch.Tensor:
        return vector if self.channel_dim == -1 else vector.reshape(-1, *([1] * (ndim - 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        return out * self._per_channel(self.ssf_scale, out.ndim) + self._per_channel(self.ssf_shift, out.ndim)

    def _ensure_bias(self) -> nn.Parameter:
        base = self.base_layer
        if base.bias is None:  # a bias-free layer gets a zero bias to hold the merged shift
            base.bias = nn.Parameter(torch.zeros_like(self.ssf_shift), requires_grad=False)
        return base.bias

    def merge(self) -> None:
        if self.merged:
            return
        weight, bias = self.base_layer.weight, self._ensure_bias()
        scale = self.ssf_scale.detach().reshape(-1, *([1] * (weight.ndim - 1)))
        with torch.no_grad():
            weight.mul_(scale.to(weight.dtype))
            bias.mul_(self.ssf_scale.to(bias.dtype)).add_(self.ssf_shift.to(bias.dtype))
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged:
            return
        weight, bias = self.base_layer.weight, self.base_layer.bias
        scale = self.ssf_scale.detach().reshape(-1, *([1] * (weight.ndim - 1)))
        with torch.no_grad():
            weight.div_(scale.to(weight.dtype))
            bias.sub_(self.ssf_shift.to(bias.dtype)).div_(self.ssf_scale.to(bias.dtype))
        self.merged = False

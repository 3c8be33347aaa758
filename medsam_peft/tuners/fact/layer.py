from __future__ import annotations

import math

import torch
import torch.nn as nn

from medsam_peft.tuners.base import BaseTunerLayer


class SharedFactors(nn.Module):
    """FacT's U (C x r) and V (r x C), shared by every factorised layer of the encoder."""

    def __init__(self, dim: int, r: int, init_weights: bool, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.fact_u = nn.Parameter(torch.empty(dim, r, device=device, dtype=dtype))
        self.fact_v = nn.Parameter(torch.zeros(r, dim, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.fact_u, a=math.sqrt(5))
        if not init_weights:
            nn.init.normal_(self.fact_v, std=0.02)


class FactorisedLinear(nn.Module, BaseTunerLayer):
    """``W x + b + s * concat_j((dropout(x U) T_j) V)`` for a frozen Linear C -> kC (k cores)."""

    supports_merge = True

    def __init__(self, base_layer: nn.Linear, factors: SharedFactors, scale: float, dropout: float = 0.0) -> None:
        super().__init__()
        dim, r = factors.fact_u.shape
        if not isinstance(base_layer, nn.Linear) or base_layer.in_features != dim or base_layer.out_features % dim:
            raise TypeError(
                f"FacT factorises Linear layers {dim} -> k*{dim}; got {base_layer} (choose target_modules among the "
                "encoder's attn.qkv, attn.proj and mlp.lin1)"
            )
        self.base_layer = base_layer
        self._factors = (factors,)  # registered once, on the image encoder
        self.scale = float(scale)
        blocks = base_layer.out_features // dim
        weight = base_layer.weight
        self.fact_core = nn.Parameter(torch.empty(blocks, r, r, device=weight.device, dtype=weight.dtype))
        for core in self.fact_core:  # each core initialised as FacT's nn.Linear(r, r) weight
            nn.init.kaiming_uniform_(core, a=math.sqrt(5))
        self.fact_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        u, v = self._factors[0].fact_u, self._factors[0].fact_v
        # Block j of the (out x in) weight is (U T_j V)^T; stack the blocks along the output dimension.
        return self.scale * torch.cat([(u @ core @ v).T for core in self.fact_core], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        u, v = self._factors[0].fact_u, self._factors[0].fact_v
        projected = self.fact_dropout(x) @ u.to(x.dtype)  # (..., r)
        per_block = torch.einsum("...r,jrs->...js", projected, self.fact_core.to(x.dtype)) @ v.to(x.dtype)
        return out + self.scale * per_block.flatten(-2)

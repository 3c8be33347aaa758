from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsam_peft.tuners.base import BaseTunerLayer


class SvdCoefficientLayer(nn.Module, BaseTunerLayer):
    """A frozen ``nn.Conv2d`` / ``nn.Linear`` whose weight is re-expressed through its singular values.

    With W0 = U diag(s0) V^T (full rank, computed in float64), the layer uses
    ``W = W0 + U diag(s_eff - s0) V^T``, which equals ``U diag(s_eff) V^T`` and is exactly W0 at initialisation
    (no SVD round-off enters the output). Only ``sam_parser_s`` trains; U, V^T and s0 are non-persistent buffers,
    recomputed from the pretrained weight, so adapter files hold just the coefficients.
    """

    supports_merge = True

    def __init__(self, base_layer: nn.Module, spectral_shift: bool = False, init_weights: bool = True) -> None:
        super().__init__()
        if not isinstance(base_layer, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"SAM-PARSER decomposes nn.Conv2d and nn.Linear layers, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.spectral_shift = spectral_shift
        weight = base_layer.weight
        matrix = weight.reshape(weight.shape[0], -1)  # C_out x (C_in * kh * kw), output-channel major
        rank = min(matrix.shape)
        if weight.is_meta:
            u, s, vt = (torch.empty(matrix.shape[0], rank, device="meta"), torch.empty(rank, device="meta"),
                        torch.empty(rank, matrix.shape[1], device="meta"))
        else:
            u, s, vt = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
        self.register_buffer("basis_u", u.to(weight.dtype), persistent=False)
        self.register_buffer("basis_vt", vt.to(weight.dtype), persistent=False)
        self.register_buffer("pretrained_s", s.to(weight.dtype), persistent=False)
        start = torch.zeros_like(self.pretrained_s) if spectral_shift else self.pretrained_s.clone()
        if not init_weights and not weight.is_meta:
            start = start + 0.1 * torch.randn_like(start) * self.pretrained_s.mean()
        self.sam_parser_s = nn.Parameter(start)

    @property
    def rank(self) -> int:
        return int(self.pretrained_s.numel())

    def effective_singular_values(self) -> torch.Tensor:
        if self.spectral_shift:
            return F.relu(self.pretrained_s + self.sam_parser_s)
        return self.sam_parser_s

    def delta_weight(self) -> torch.Tensor:
        change = self.effective_singular_values() - self.pretrained_s
        return ((self.basis_u * change) @ self.basis_vt).reshape(self.base_layer.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        weight = base.weight if self.merged else base.weight + self.delta_weight()
        if isinstance(base, nn.Conv2d):
            return base._conv_forward(x, weight, base.bias)
        return F.linear(x, weight, base.bias)

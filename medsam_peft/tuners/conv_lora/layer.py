from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsam_peft.tuners.base import BaseTunerLayer
from medsam_peft.tuners.conv_lora.moe import NoisyTopOneGate, ScaleConvExpert, cv_squared
from medsam_peft.tuners.lora.layer import low_rank_factors
from medsam_peft.utils.distributed import global_batch_sum
from medsam_peft.utils.graph_capture import exporting, graph_capture


class ConvLoraLinear(nn.Module, BaseTunerLayer):
    """``y = W x + b + (alpha / r) * B (A x + Expert_g(A x))`` around a frozen ``nn.Linear``.

    ``A x`` is laid out on its 2-D token grid: SAM's blocks call ``qkv`` with (N, H, W, C) tensors, N = B * windows
    in windowed blocks and N = B in global blocks, so the experts and the gate work per window / per image as in
    the reference. TinyViT calls it with (N, L, C) square windows, reshaped to (N, sqrt(L), sqrt(L), C).

    The load-balancing loss of the last forward is kept on the layer (``aux_loss()``) instead of being returned,
    so the layer keeps ``nn.Linear``'s contract and SAM needs no fork.
    """

    merge_unsupported_reason = "the convolution experts act non-linearly on the bottleneck"
    routes_inputs = True  # an expert no window chose gets no gradient in that step

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int,
        alpha: float,
        num_experts: int = 8,
        noisy_gating: bool = True,
        aux_loss_coef: float = 0.01,
        dropout: float = 0.0,
        init_weights: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"Conv-LoRA targets nn.Linear layers, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.r = int(r)
        self.scaling = float(alpha) / self.r
        self.aux_loss_coef = aux_loss_coef
        self.conv_lora_A, self.conv_lora_B = low_rank_factors(base_layer, self.r, init_weights)
        self.conv_lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        with torch.device(base_layer.weight.device):
            self.conv_lora_gate = NoisyTopOneGate(self.r, num_experts, noisy_gating, init_weights)
            self.conv_lora_experts = nn.ModuleList(ScaleConvExpert(self.r, s) for s in range(1, num_experts + 1))
        self._aux_loss: torch.Tensor | None = None
        self.last_expert_index: torch.Tensor | None = None

    def _grid(self, z: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """(N, H, W, r) or (N, L, r) bottleneck -> (N, r, H, W) and the shape to restore."""
        if z.ndim == 4:
            return z.permute(0, 3, 1, 2), z.shape
        if z.ndim == 3:
            side = math.isqrt(z.shape[1])
            if side * side != z.shape[1]:
                raise ValueError(f"Conv-LoRA needs a square token grid, got {z.shape[1]} tokens")
            return z.reshape(z.shape[0], side, side, -1).permute(0, 3, 1, 2), z.shape
        raise ValueError(f"Conv-LoRA expects (N, H, W, C) or (N, L, C) inputs, got {tuple(z.shape)}")

    def route(self, grid: torch.Tensor) -> torch.Tensor:
        """Expert output for every sample, each computed only by the expert the gate chose for it."""
        index, importance, load = self.conv_lora_gate(grid)
        if self.training and torch.is_grad_enabled():
            # Under DDP the balance is over the global batch, as in one process: every rank runs the same training
            # steps (even shards), so these forward collectives pair up; evaluation (uneven shards) never runs them.
            importance, load = global_batch_sum(importance), global_batch_sum(load)
        if not exporting():  # the balance loss and routing record are training state, not part of an exported graph
            self._aux_loss = self.aux_loss_coef * (cv_squared(importance) + cv_squared(load))
            self.last_expert_index = index.detach()
        if graph_capture():
            # TorchScript tracing / ONNX / torch.export record no Python control flow: every expert runs and the
            # gate's index picks each sample's output (the same values; the eager loop only skips idle experts).
            stacked = torch.stack([expert(grid) for expert in self.conv_lora_experts], dim=1)
            picked = index.view(-1, 1, 1, 1, 1).expand(-1, 1, *stacked.shape[2:])
            return stacked.gather(1, picked).squeeze(1)
        out = torch.zeros_like(grid)
        for expert_id in index.unique().tolist():
            chosen = (index == expert_id).nonzero(as_tuple=True)[0]
            out = out.index_copy(0, chosen, self.conv_lora_experts[expert_id](grid.index_select(0, chosen)))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        z = F.linear(self.conv_lora_dropout(x), self.conv_lora_A)
        grid, shape = self._grid(z)
        grid = grid + self.route(grid)  # residual inside the bottleneck
        z = grid.permute(0, 2, 3, 1).reshape(shape)
        return out + self.scaling * F.linear(z, self.conv_lora_B)

    def aux_loss(self) -> torch.Tensor | None:
        return self._aux_loss

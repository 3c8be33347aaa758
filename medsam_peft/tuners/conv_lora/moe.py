"""Noisy top-1 gating over multi-scale convolution experts, as in the Conv-LoRA reference (MoEGate).

The gate follows Shazeer et al. (2017): clean logits from global-average-pooled bottleneck features, Gaussian noise
with a learned scale in training, top-1 selection, and a load-balancing loss from the importance and the
(smooth, differentiable) load of each expert.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def cv_squared(values: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation with torch's unbiased variance; 0 for a single value (reference)."""
    values = values.float()
    if values.numel() == 1:
        return values.new_zeros(())
    return values.var() / (values.mean() ** 2 + 1e-10)


class NoisyTopOneGate(nn.Module):
    """Route each sample (a window or an image) to one of ``num_experts`` experts.

    Args:
        dim: bottleneck channels (the LoRA rank).
        num_experts: number of experts E (>= 2).
        noisy: add learned-scale Gaussian noise to the logits in training mode.
        init_weights: zero-initialised gate weights (reference); random for tests.
    """

    def __init__(self, dim: int, num_experts: int, noisy: bool = True, init_weights: bool = True) -> None:
        super().__init__()
        if num_experts < 2:
            raise ValueError(f"the gate needs at least 2 experts, got {num_experts}")
        self.num_experts = num_experts
        self.noisy = noisy
        self.w_gate = nn.Parameter(torch.zeros(dim, num_experts))
        self.w_noise = nn.Parameter(torch.zeros(dim, num_experts))
        if not init_weights:
            nn.init.normal_(self.w_gate, std=0.5)
            nn.init.normal_(self.w_noise, std=0.5)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, r, H, W) bottleneck features -> (expert index (N,), importance (E,), load (E,))."""
        pooled = features.mean(dim=(2, 3)).float()
        clean = pooled @ self.w_gate.float()
        noisy_training = self.noisy and self.training
        if noisy_training:
            noise_std = F.softplus(pooled @ self.w_noise.float()) + 1e-2
            logits = clean + torch.randn_like(clean) * noise_std
        else:
            logits = clean
        top_values, top_indices = logits.topk(2, dim=1)
        index = top_indices[:, 0]
        # Softmax over the single selected logit: the gate value is exactly 1 (it is never multiplied in).
        gates = torch.zeros_like(logits).scatter(1, index[:, None], torch.softmax(top_values[:, :1], dim=1))
        importance = gates.sum(0)
        if noisy_training:
            load = self._prob_in_top_one(clean, logits, noise_std, top_values).sum(0)
        else:
            load = (gates > 0).sum(0).float()
        return index, importance, load

    @staticmethod
    def _prob_in_top_one(
        clean: torch.Tensor, noisy: torch.Tensor, noise_std: torch.Tensor, top_values: torch.Tensor
    ) -> torch.Tensor:
        """P(expert e stays in the top 1 under fresh noise), as the reference ``_prob_in_top_k`` with k = 1."""
        threshold_if_in = top_values[:, 1:2]  # the runner-up value: an expert inside must stay above it
        threshold_if_out = top_values[:, 0:1]  # the winner: an expert outside must climb above it
        is_in = noisy > threshold_if_in
        normal = torch.distributions.Normal(clean.new_zeros(()), clean.new_ones(()))
        prob_if_in = normal.cdf((clean - threshold_if_in) / noise_std)
        prob_if_out = normal.cdf((clean - threshold_if_out) / noise_std)
        return torch.where(is_in, prob_if_in, prob_if_out)


class ScaleConvExpert(nn.Module):
    """Bicubic up-scaling by ``scale``, 3x3 convolution r->r (zero bias), GELU, bicubic back to the input size."""

    def __init__(self, channels: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=True)
        nn.init.zeros_(self.conv.bias)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if self.scale != 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="bicubic")
        x = self.act(self.conv(x))
        if self.scale != 1:
            x = F.interpolate(x, size=size, mode="bicubic")
        return x

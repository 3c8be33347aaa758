"""Noisy top-1 gating over multi-scale convolution experts, as in the Conv-LoRA reference (MoEGate).

The gate follows Shazeer et al. (2017): clean logits from global-average-pooled bottleneck features, Gaussian noise
with a learned scale in training, top-1 selection, and a load-balancing loss from the importance and the
(smooth, differentiable) load of each expert.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsam_peft.utils.graph_capture import graph_capture


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


@functools.lru_cache(maxsize=256)
def bicubic_matrix(size_in: int, size_out: int, device: torch.device,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(size_out, size_in) matrix M with ``M @ v`` = ``F.interpolate(v, size_out, mode="bicubic")`` along one axis:
    PyTorch's bicubic resampling (align_corners False, border-clamped) is linear and separable, so it is the
    interpolation of each basis vector, computed once per size in float64 and rounded once to ``dtype``."""
    basis = torch.eye(size_in, dtype=torch.float64)[:, None, :, None]  # (size_in, 1, size_in, 1)
    resampled = F.interpolate(basis, size=(size_out, 1), mode="bicubic")[:, 0, :, 0]  # (size_in, size_out)
    return resampled.T.to(device=device, dtype=dtype).contiguous()


class ScaleConvExpert(nn.Module):
    """Bicubic up-scaling by ``scale``, 3x3 convolution r->r (zero bias), GELU, bicubic back to the input size.

    ``cpu_fast_path`` (on by default), on the CPU in float32 without autocast (``precision`` float32, e.g. every
    AVX2-only CPU) and, without autograd (inference, validation), in bf16 under bf16 autocast (``precision`` auto on
    CPUs with native bf16): both resamplings are products with precomputed bicubic matrices (``bicubic_matrix``) and
    the convolution runs channels-last. Its
    convolutions have only r (3-8) channels on up-scaled windows, where oneDNN's NCHW kernels are slow and
    ``F.interpolate`` (and its backward) is slower still: a 3->3 3x3 convolution forward + backward on
    (110, 3, 49, 49) took 68 ms NCHW and 16.5 ms channels-last on this project's CPU. The values are the plain path's
    (tested: float32 outputs and gradients equal to rounding, bf16 as accurate as the plain bf16 path). bf16
    training keeps the plain path: any change of its arithmetic moves the training trajectory (running the experts in
    float32 under bf16, or this bf16 path, left the label-server tests' one-epoch click-trained model answering a
    lone click with Dice 0.06-0.08 instead of > 0.25), so it waits until the recorded training figures are re-run.
    Graph capture (TorchScript, ONNX, ``torch.compile``) always records the plain path.
    """

    def __init__(self, channels: int, scale: int, cpu_fast_path: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=True)
        nn.init.zeros_(self.conv.bias)
        self.act = nn.GELU()
        self.cpu_fast_path = cpu_fast_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpu_fast_path and x.device.type == "cpu" and not graph_capture():
            if torch.is_autocast_enabled("cpu"):
                # bf16 autocast, inference and validation only: the products and the convolution run in bf16 as the
                # plain path's resamplings and convolution do, equal to bf16 rounding; bf16 training keeps the plain
                # path, whose trajectory every recorded training figure (README, tests' fine-tunes) comes from
                if (torch.get_autocast_dtype("cpu") == torch.bfloat16 and x.dtype == torch.bfloat16
                        and not torch.is_grad_enabled()):
                    return self._fast(x)
            elif x.dtype == torch.float32:
                return self._fast(x)
        size = x.shape[-2:]
        if self.scale != 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="bicubic")
        x = self.act(self.conv(x))
        if self.scale != 1:
            x = F.interpolate(x, size=size, mode="bicubic")
        return x

    def _fast(self, x: torch.Tensor) -> torch.Tensor:
        """The plain path's arithmetic for CPU input: float32 outside autocast, bf16 under it (``forward`` checks)."""
        height, width = x.shape[-2:]
        device, dtype = x.device, x.dtype
        if self.scale != 1:
            x = bicubic_matrix(height, height * self.scale, device, dtype) @ x @ bicubic_matrix(
                width, width * self.scale, device, dtype).T
        x = self.act(self.conv(x.contiguous(memory_format=torch.channels_last)))
        if self.scale != 1:
            x = bicubic_matrix(height * self.scale, height, device, dtype) @ x.contiguous() @ bicubic_matrix(
                width * self.scale, width, device, dtype).T
        return x


def set_expert_fast_path(model: nn.Module, enabled: bool) -> int:
    """Switch ``ScaleConvExpert.cpu_fast_path`` on every expert of ``model``; returns how many experts it found."""
    experts = [m for m in model.modules() if isinstance(m, ScaleConvExpert)]
    for expert in experts:
        expert.cpu_fast_path = bool(enabled)
    return len(experts)

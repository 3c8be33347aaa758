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


@functools.lru_cache(maxsize=256)
def tap_resampling_matrix(size_in: int, size_out: int, device: torch.device,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(size_out, 3 * size_in) matrix ``[U_-1 | U_0 | U_+1]``: ``U`` resamples one axis from ``size_in`` to
    ``size_out`` (``bicubic_matrix``; the identity when the sizes are equal) and ``U_d`` is ``U`` with its rows moved
    by ``d`` (row p of ``U_d`` is row p + d of ``U``, zero outside): the up-sampled row that a 3x3 convolution's tap
    ``d`` reads at output row p, with the convolution's zero padding. Built in float64, rounded once to ``dtype``."""
    if size_in == size_out:
        resampling = torch.eye(size_in, dtype=torch.float64)
    else:
        resampling = bicubic_matrix(size_in, size_out, torch.device("cpu"), torch.float64)
    taps = torch.zeros(size_out, 3, size_in, dtype=torch.float64)
    for tap, shift in enumerate((-1, 0, 1)):
        first, stop = max(0, -shift), min(size_out, size_out - shift)
        taps[first:stop, tap] = resampling[first + shift:stop + shift]
    return taps.reshape(size_out, 3 * size_in).to(device=device, dtype=dtype).contiguous()


def window_bucket(count: int, step: int = 32) -> int:
    """Window count rounded up to a power of two up to ``step``, to a multiple of ``step`` above.

    The gate gives each expert another number of windows every step, and oneDNN builds (JIT-compiles) a kernel for
    every new matrix shape of a bf16 product: that took more time than the experts' arithmetic (LiteMedSAM bf16
    training step, interleaved in one process: Conv-LoRA 1.21x LoRA with exact counts, 1.11-1.14x with these
    buckets). The padded windows are zeros whose outputs are dropped; each window's output does not depend on the
    others.
    """
    if count <= step:
        return 1 << max(count - 1, 0).bit_length()
    return -(-count // step) * step


class ScaleConvExpert(nn.Module):
    """Bicubic up-scaling by ``scale``, 3x3 convolution r->r (zero bias), GELU, bicubic back to the input size.

    ``cpu_fast_path`` (on by default; ``set_expert_fast_path``), on the CPU in float32 without autocast and in bf16
    under bf16 autocast (``precision`` auto on CPUs with native bf16), training and inference: the up-scaling and the
    convolution are one linear map, computed as two matrix products on the small grid's taps (``_fast``), and the
    down-scaling is a product with precomputed bicubic matrices. The plain path runs an r-channel (3-8) convolution
    on the up-scaled grid, where oneDNN is slow, and ``F.interpolate`` twice, slower still in backward: on this
    project's CPU (bf16, forward + backward, 110 windows of 7x7, scale 8) 39.2 ms plain, 2.8 ms fused. The values
    are the plain path's (tested: float64 equal to 1e-12, float32 outputs and gradients equal to rounding, bf16 as
    accurate as the plain bf16 path against float64). Graph capture (TorchScript, ONNX, ``torch.compile``) records
    the plain path.
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
                # the bottleneck under bf16 autocast is bf16: the fast path computes in bf16 as the plain path does
                if torch.get_autocast_dtype("cpu") == torch.bfloat16 and x.dtype == torch.bfloat16:
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
        """The plain path's arithmetic in another order, for (N, C, h, w) CPU input in float32, or bf16 under autocast.

        The convolution of the up-scaled grid ``U_h X U_w^T`` is, per output channel o,
        ``sum over taps (dy, dx) of U_h,dy (sum_i W[o, i, dy, dx] X_i) U_w,dx^T``: the channels are mixed per tap on
        the small grid (one product with the weights), the 9 taps laid out as a (3h, 3w) grid per channel, and
        ``tap_resampling_matrix`` sums them while up-scaling (two products). Nothing of size C x sh x sw exists before
        the convolution's output.
        """
        # a MONAI MetaTensor (images from a MONAI pipeline keep the type through the network) would try to slice
        # per-image metadata along the window dimension; the same data as a plain tensor, in the autograd graph
        x = x.as_subclass(torch.Tensor)
        count = x.shape[0]
        padded = window_bucket(count)
        if padded != count:
            x = torch.cat([x, x.new_zeros(padded - count, *x.shape[1:])])
        batch, channels, height, width = x.shape
        dtype = x.dtype
        weight = self.conv.weight.permute(0, 2, 3, 1).reshape(channels * 9, channels)  # rows (o, dy, dx), columns i
        taps = F.linear(x.permute(0, 2, 3, 1), weight.to(dtype))  # (N, h, w, C * 9)
        taps = taps.view(batch, height, width, channels, 3, 3).permute(0, 3, 4, 1, 5, 2)  # (N, o, dy, h, dx, w)
        taps = taps.reshape(batch, channels, 3 * height, 3 * width)
        up_h = tap_resampling_matrix(height, height * self.scale, x.device, dtype)
        up_w = tap_resampling_matrix(width, width * self.scale, x.device, dtype)
        y = self.act(up_h @ (taps @ up_w.T) + self.conv.bias.to(dtype)[:, None, None])
        if self.scale != 1:
            y = bicubic_matrix(height * self.scale, height, x.device, dtype) @ (
                y @ bicubic_matrix(width * self.scale, width, x.device, dtype).T)
        return y[:count]


def set_expert_fast_path(model: nn.Module, enabled: bool) -> int:
    """Switch ``ScaleConvExpert.cpu_fast_path`` on every expert of ``model``; returns how many experts it found."""
    experts = [m for m in model.modules() if isinstance(m, ScaleConvExpert)]
    for expert in experts:
        expert.cpu_fast_path = bool(enabled)
    return len(experts)

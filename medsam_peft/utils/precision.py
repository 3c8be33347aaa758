"""Which autocast precision a device runs well: ``precision="auto"`` (every bundle's default) resolves here.

bfloat16 halves matmul time on GPUs and on CPUs with native bf16 (AVX512-BF16 / AMX, Arm BF16), but a CPU without
it (an AVX2-only EPYC, measured: bf16 matmul 100x and conv 230x slower than float32) runs oneDNN's reference path:
a LiteMedSAM forward takes 78 s instead of 0.8 s. So ``auto`` measures once per process instead of trusting the
CPU's name.
"""

from __future__ import annotations

import functools
import logging
import time

import torch

from medsam_peft.errors import ConfigError

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bfloat16", "float16", "float32")
_FAST_RATIO = 4.0  # native bf16 runs a matmul in 0.3-1x float32's time; the emulated path in 30-100x


def _best_time(a: torch.Tensor, b: torch.Tensor, repeats: int = 3) -> float:
    a @ b  # warm-up (kernel selection, allocations)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


@functools.lru_cache(maxsize=None)
def cpu_bfloat16_slowdown() -> float:
    """Measured time of a 256x256 bf16 matmul over the same float32 one on this CPU (once per process, ~10 ms on a
    CPU with native bf16, under 0.2 s without)."""
    a, b = torch.rand(256, 256), torch.rand(256, 256)
    fp32 = _best_time(a, b)
    bf16 = _best_time(a.bfloat16(), b.bfloat16(), repeats=2)
    return bf16 / max(fp32, 1e-9)


def cpu_has_fast_bfloat16() -> bool:
    return cpu_bfloat16_slowdown() <= _FAST_RATIO


@functools.lru_cache(maxsize=None)
def _warn_slow_bfloat16() -> None:
    logger.warning("precision bfloat16 runs %.0fx slower than float32 on this CPU (no native bfloat16): use "
                   "--precision auto (float32 here) or float32", cpu_bfloat16_slowdown())


def resolve_precision(precision: str | None, device: str | torch.device = "cpu") -> str:
    """The autocast dtype name to run ``precision`` with on ``device``.

    ``"auto"``: bfloat16 on CUDA devices that support it (float16 on older ones, trained with a GradScaler), bfloat16
    on CPUs that run it natively, float32 elsewhere. Explicit names are kept (a warning when bfloat16 is asked for on a
    CPU that emulates it).
    """
    name = "float32" if precision is None else str(precision)
    if name not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    kind = torch.device(device).type
    if name == "auto":
        if kind == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        if kind == "cpu":
            return "bfloat16" if cpu_has_fast_bfloat16() else "float32"
        return "float32"
    if name == "bfloat16" and kind == "cpu" and not cpu_has_fast_bfloat16():
        _warn_slow_bfloat16()
    return name


__all__ = ["PRECISIONS", "cpu_bfloat16_slowdown", "cpu_has_fast_bfloat16", "resolve_precision"]

"""Keep freed CPU memory in the process for reuse, instead of handing it back to the kernel.

PyTorch's CPU tensors come from ``malloc``. glibc serves every block over 32 MiB (and, by default, anything over its
dynamic threshold) with a fresh ``mmap`` and returns it with ``munmap`` on free, so each large temporary of a training
step (attention scores, MLP activations, their gradients) is page-faulted and zeroed by the kernel again, every step.
Measured on this project's 2-core CPU (ViT-B 1024², Conv-LoRA, bf16): 12.9 s per step with glibc's defaults, 11.5 s
with freed memory kept (peak RSS 4.20 GiB both), and elementwise ops on 50 MB tensors 3-7x faster.

``mallopt`` changes the process's allocator, so it is an explicit switch: the training workflow sets it from the
bundle key ``cpu_allocator`` ("reuse" by default, "system" leaves glibc alone) when it trains on the CPU. CUDA memory
has its own caching allocator and is not affected. The cost is RSS that does not shrink between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

import torch

from medsam_peft.errors import ConfigError

CPU_ALLOCATORS = ("reuse", "system")

# mallopt parameters from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

_applied = False
logger = logging.getLogger(__name__)


def keep_freed_cpu_memory() -> bool:
    """Make glibc serve every allocation from its heap (no per-block ``mmap``) and keep up to 2 GiB of free heap
    instead of trimming it. Returns whether it took effect: False (with a log line) where the C library is not glibc.
    Idempotent; it cannot be undone within the process."""
    global _applied
    if _applied:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.info("cpu_allocator 'reuse' needs glibc's mallopt, which this C library lacks; using its defaults")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success.
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
    return _applied


def configure_cpu_allocator(mode: str, device: torch.device | str = "cpu") -> bool:
    """Apply the bundle key ``cpu_allocator``: "reuse" keeps freed memory (:func:`keep_freed_cpu_memory`) when
    ``device`` is the CPU; "system" leaves the allocator as it is. Returns whether freed memory is now kept."""
    if mode not in CPU_ALLOCATORS:
        raise ConfigError(f"cpu_allocator must be one of {CPU_ALLOCATORS}, got {mode!r}: 'reuse' keeps freed CPU "
                         f"memory for the next step (faster), 'system' leaves glibc's allocator as it is")
    if mode == "system" or torch.device(device).type != "cpu":
        return _applied
    return keep_freed_cpu_memory()


__all__ = ["CPU_ALLOCATORS", "configure_cpu_allocator", "keep_freed_cpu_memory"]

"""Activation checkpointing of the image encoder's blocks: keep each block's input, recompute its inside in backward.

Trades one extra encoder forward for the activations of every block (the bulk of a training step's memory at 1024²).
Non-reentrant ``torch.utils.checkpoint`` with the RNG state preserved, so Conv-LoRA's noisy gate routes the
recomputation exactly as the forward did. Only the bound ``forward`` of each block changes; names, parameters and
adapters stay as they are.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


def encoder_blocks(encoder: nn.Module) -> nn.ModuleList:
    """The repeated blocks of a SAM ViT (``blocks``) or of LiteMedSAM's TinyViT (``layers``)."""
    for name in ("blocks", "layers"):
        blocks = getattr(encoder, name, None)
        if isinstance(blocks, nn.ModuleList):
            return blocks
    raise ValueError(f"{type(encoder).__name__} has no 'blocks' or 'layers' list to checkpoint")


def _checkpointed_forward(self: nn.Module, *args: Any) -> Any:
    forward = type(self).forward
    if self.training and torch.is_grad_enabled():
        return checkpoint(forward, self, *args, use_reentrant=False, preserve_rng_state=True)
    return forward(self, *args)


def set_activation_checkpointing(encoder: nn.Module, enabled: bool = True) -> int:
    """Checkpoint (or stop checkpointing) every block of ``encoder`` in training; returns the number of blocks."""
    blocks = encoder_blocks(encoder)
    for block in blocks:
        if enabled:
            block.forward = types.MethodType(_checkpointed_forward, block)
        else:
            block.__dict__.pop("forward", None)
    return len(blocks)


def is_activation_checkpointing(encoder: nn.Module) -> bool:
    return any("forward" in block.__dict__ for block in encoder_blocks(encoder))


__all__ = ["encoder_blocks", "is_activation_checkpointing", "set_activation_checkpointing"]

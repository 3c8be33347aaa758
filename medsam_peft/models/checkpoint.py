"""Reading SAM-family checkpoints safely and fitting them to the requested input size."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsam_peft.errors import MedsamPeftError

_MAX_LISTED = 8


class CheckpointError(MedsamPeftError, RuntimeError):
    """A checkpoint file is unreadable or does not fit the model it is loaded into."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict with ``weights_only=True``; unwraps ``{"model": ...}`` / ``{"state_dict": ...}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; give the path to a downloaded .pth file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "it is truncated, corrupt or not a PyTorch state dict - download it again"
        ) from err
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    return obj


def _resize_pos_embed(pos_embed: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # (1, H, W, C) absolute embedding on the token grid; bicubic as timm's resample_abs_pos_embed.
    grid = pos_embed.permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=size, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).to(pos_embed.dtype)


def _resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    # (2S-1, head_dim) table; linear, as segment_anything's get_rel_pos does at run time.
    table = rel_pos.float().t().unsqueeze(0)
    table = F.interpolate(table, size=length, mode="linear", align_corners=False)
    return table.squeeze(0).t().to(rel_pos.dtype)


def fit_to_model(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Interpolate ``pos_embed`` and global-attention ``rel_pos_*`` tables whose size differs from ``model``'s.

    A checkpoint trained at 1024x1024 (64x64 tokens) then runs at e.g. 256x256 (16x16 tokens). Windowed blocks
    keep their 14x14 tables, so only global blocks and the absolute embedding change.
    """
    target = model.state_dict()
    fitted = dict(state)
    for key, value in state.items():
        if key not in target or target[key].shape == value.shape:
            continue
        wanted = target[key].shape
        if key.endswith("pos_embed") and value.ndim == 4:
            fitted[key] = _resize_pos_embed(value, (wanted[1], wanted[2]))
        elif key.endswith(("rel_pos_h", "rel_pos_w")) and value.ndim == 2 and value.shape[1] == wanted[1]:
            fitted[key] = _resize_rel_pos(value, wanted[0])
    return fitted


def load_checkpoint_into(model: nn.Module, path: str | os.PathLike, backbone: str = "") -> None:
    """Strictly load the checkpoint at ``path`` into ``model``, after fitting it to the model's input size.

    Raises:
        CheckpointError: listing missing keys, unexpected keys and shape mismatches, with the file name.
    """
    state = fit_to_model(read_state_dict(path), model)
    target = model.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(set(state) & set(target))
        if state[k].shape != target[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
                parts.append(f"{len(keys)} {title}: {', '.join(keys[:_MAX_LISTED])}{more}")
        raise CheckpointError(
            f"checkpoint {path} does not match the {backbone or 'requested'} architecture - " + "; ".join(parts)
            + ". Is it a checkpoint of another backbone size (vit_b / vit_l / vit_h / lite_medsam)?"
        )
    model.load_state_dict(state, strict=True)

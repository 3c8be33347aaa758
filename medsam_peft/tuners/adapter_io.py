"""Adapter-only files: the trainable tensors of a tuned model plus the metadata needed to rebuild it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from medsam_peft.tuners.base import TunedSam

ADAPTER_FORMAT = "medsam_peft.adapter/1"


class AdapterLoadError(RuntimeError):
    """An adapter file does not fit the model it is loaded into."""


def adapter_state_dict(model: TunedSam) -> dict[str, torch.Tensor]:
    """Every trainable tensor (adapter parameters and fully-trained modules), detached, on the CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.model.named_parameters() if p.requires_grad}


def adapter_metadata(model: TunedSam) -> dict[str, Any]:
    from medsam_peft import __version__

    return {
        "tuner": model.config.tuner_type,
        "options": model.config.to_dict(),
        "backbone": model.model.backbone,
        "image_size": model.model.image_size,
        "medsam_peft_version": __version__,
    }


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_adapter(model: TunedSam, path: str | os.PathLike) -> Path:
    """Write the adapter file (a few MB at most: no frozen SAM weights)."""
    payload = {"format": ADAPTER_FORMAT, "metadata": adapter_metadata(model), "state_dict": adapter_state_dict(model)}
    return atomic_torch_save(payload, path)


def read_adapter(path: str | os.PathLike) -> dict[str, Any]:
    """Read an adapter file with ``weights_only=True`` and check its format marker."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for truncated/foreign files
        raise AdapterLoadError(f"adapter file {path} cannot be read ({type(err).__name__}); it is truncated or corrupt") from err
    if not isinstance(payload, dict) or payload.get("format") != ADAPTER_FORMAT:
        raise AdapterLoadError(
            f"{path} is not a medsam_peft adapter file (format marker {payload.get('format') if isinstance(payload, dict) else None!r}, "
            f"expected {ADAPTER_FORMAT!r}); a full SAM checkpoint goes to build_sam(checkpoint=...)"
        )
    return payload


def load_adapter(model: TunedSam, path: str | os.PathLike) -> None:
    """Strictly load an adapter file into an already tuned model.

    Raises:
        AdapterLoadError: naming the file and the mismatching tuner, backbone, options, keys or shapes.
    """
    payload = read_adapter(path)
    apply_adapter_state(model, payload["metadata"], payload["state_dict"], f"adapter file {path}")


def apply_adapter_state(model: TunedSam, meta: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> None:
    """Check ``meta``/``state`` against ``model`` (tuner, backbone, options, keys, shapes) and copy the tensors in."""
    problems = []
    if meta.get("tuner") != model.config.tuner_type:
        problems.append(f"tuner {meta.get('tuner')!r} in the file vs {model.config.tuner_type!r} in the model")
    if meta.get("backbone") != model.model.backbone:
        problems.append(f"backbone {meta.get('backbone')!r} in the file vs {model.model.backbone!r} in the model")
    theirs, ours = meta.get("options", {}), model.config.to_dict()
    differing = sorted(k for k in set(theirs) | set(ours) if k != "init_weights" and theirs.get(k) != ours.get(k))
    if differing:
        problems.append("options differ: " + ", ".join(f"{k}={theirs.get(k)!r} (model: {ours.get(k)!r})" for k in differing))
    expected = {n: p for n, p in model.model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing:
        problems.append(f"{len(missing)} missing tensors: {missing[:6]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors: {unexpected[:6]}")
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if shapes:
        problems.append(f"shape mismatch: {shapes[:6]}")
    if problems:
        raise AdapterLoadError(f"{source} does not fit this model: " + "; ".join(problems))
    with torch.no_grad():
        for name, tensor in state.items():
            expected[name].copy_(tensor)

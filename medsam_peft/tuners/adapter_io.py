"""Adapter-only files: the trainable tensors of a tuned model plus the metadata needed to rebuild it.

Two containers hold the same payload (format marker, metadata with the tensors' checksum, tensors):
``.safetensors`` (the default: no pickle, readable by any safetensors reader, the metadata as JSON in the header)
and the older ``torch.save`` ``.pt`` dict, which keeps loading. ``read_adapter`` tells them apart by content.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from medsam_peft.errors import MedsamPeftError
from medsam_peft.tuners.base import DECODER_SHAPE_KEYS, TunedSam
from medsam_peft.utils.atomic_io import atomic_torch_save, atomic_write_bytes
from medsam_peft.version import __version__

ADAPTER_FORMAT = "medsam_peft.adapter/1"
CHECKSUM_KEY = "tensor_sha256"
BASE_CHECKSUM_KEY = "base_sha256"
SAFETENSORS_SUFFIX = ".safetensors"


class AdapterLoadError(MedsamPeftError, RuntimeError):
    """An adapter file is unreadable, corrupt, or does not fit the model it is loaded into."""


def tensor_checksum(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``state`` in name order: a flipped bit anywhere changes it."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy of the bytes
    return digest.hexdigest()


def base_checksum(model: TunedSam) -> str:
    """Fingerprint of the frozen base weights (``tensor_checksum`` of every parameter that does not train), computed
    once per model: an adapter applied to other base weights (another checkpoint, MedSAM vs SAM) is told apart."""
    cached = getattr(model, "_base_sha256", None)
    if cached is None:
        frozen = {n: p for n, p in model.model.named_parameters() if not p.requires_grad}
        cached = tensor_checksum(frozen) if all(p.device.type != "meta" for p in frozen.values()) else ""
        model._base_sha256 = cached
    return cached


def adapter_payload(model: TunedSam) -> dict[str, Any]:
    """The adapter-file layout: format marker, metadata (with the tensors' checksum) and the trainable tensors."""
    state = adapter_state_dict(model)
    return {"format": ADAPTER_FORMAT, "metadata": {**adapter_metadata(model), CHECKSUM_KEY: tensor_checksum(state)},
            "state_dict": state}


def write_adapter_payload(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write an ``adapter_payload`` atomically: safetensors for a ``.safetensors`` name, else ``torch.save``."""
    path = Path(path)
    if path.suffix != SAFETENSORS_SUFFIX:
        return atomic_torch_save(payload, path)
    from safetensors.torch import save

    header = {"format": payload["format"], "metadata": json.dumps(payload["metadata"], sort_keys=True)}
    state = {k: v.contiguous() for k, v in payload["state_dict"].items()}
    return atomic_write_bytes(path, save(state, metadata=header))


def verify_checksum(meta: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse tensors whose checksum differs from the one recorded at save time (files from before checksums
    were recorded have none and are accepted)."""
    expected = meta.get(CHECKSUM_KEY)
    if expected is not None and tensor_checksum(state) != expected:
        raise AdapterLoadError(f"{source} is corrupt: its tensors do not match the checksum recorded when it was "
                               "saved (a damaged copy or a partial download); copy or export it again")


def adapter_state_dict(model: TunedSam) -> dict[str, torch.Tensor]:
    """Every trainable tensor (adapter parameters and fully-trained modules), detached, on the CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.model.named_parameters() if p.requires_grad}


def adapter_metadata(model: TunedSam) -> dict[str, Any]:
    return {
        "tuner": model.config.tuner_type,
        "options": model.config.to_dict(),
        "backbone": model.model.backbone,
        "image_size": model.model.image_size,
        "decoder": model.model.decoder_shape,
        "medsam_peft_version": __version__,
        BASE_CHECKSUM_KEY: base_checksum(model),
    }


def decoder_shape_of(meta: dict[str, Any]) -> dict[str, int | str | None]:
    """The decoder an adapter was trained with. Files from before the shape became a model option (0.x, no
    ``decoder`` entry) kept it in the tuner options (always written there), a null ``mask_tokens`` meaning SAM's
    four (every backbone's decoder has four). Multi-class files from before ``query_init`` hold the reference's
    queries (``"token0"``)."""
    if isinstance(meta.get("decoder"), dict):
        decoder = meta["decoder"]
        shape = {"mask_tokens": decoder.get("mask_tokens"), "num_classes": decoder.get("num_classes")}
    else:
        options = meta.get("options", {})
        tokens = options.get("mask_tokens")
        decoder = {}
        shape = {"mask_tokens": 4 if tokens is None else int(tokens), "num_classes": options.get("num_classes")}
    if shape["num_classes"] is not None:
        shape["query_init"] = decoder.get("query_init", "token0")
    return shape


def tuner_options_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The tuner options of an adapter file, without the decoder-shape keys older files kept there."""
    return {k: v for k, v in meta.get("options", {}).items() if k not in DECODER_SHAPE_KEYS}


def save_adapter(model: TunedSam, path: str | os.PathLike) -> Path:
    """Write the adapter file atomically (a few MB at most: no frozen SAM weights); ``.safetensors`` names get the
    safetensors container, others the ``torch.save`` one."""
    return write_adapter_payload(adapter_payload(model), path)


def _read_safetensors_payload(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    tensors = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        header = handle.metadata() or {}
        for name in handle.keys():
            tensors[name] = handle.get_tensor(name)
    try:
        metadata = json.loads(header["metadata"]) if "metadata" in header else None
    except json.JSONDecodeError as err:
        raise AdapterLoadError(f"adapter file {path} has a damaged metadata header ({err.msg}); export it again") from err
    return {"format": header.get("format"), "metadata": metadata, "state_dict": tensors}


def read_adapter(path: str | os.PathLike) -> dict[str, Any]:
    """Read an adapter file (safetensors, or ``torch.load`` with ``weights_only=True``) and check its format marker
    and tensor checksum."""
    path = Path(path)
    if not path.is_file():
        raise AdapterLoadError(f"adapter file {path} does not exist; give the adapter_best.safetensors / "
                               "adapter_final.safetensors of a training run or an exported bundle's "
                               "models/model.safetensors")
    with path.open("rb") as handle:
        magic = handle.read(4)
    try:
        # torch.save writes a zip archive; anything else is read as safetensors (8-byte header length + JSON)
        if magic.startswith(b"PK"):
            payload = torch.load(path, map_location="cpu", weights_only=True)
        else:
            payload = _read_safetensors_payload(path)
    except AdapterLoadError:
        raise
    except Exception as err:  # torch and safetensors raise several unrelated types for truncated/foreign files
        raise AdapterLoadError(f"adapter file {path} cannot be read ({type(err).__name__}); it is truncated or corrupt") from err
    if isinstance(payload, dict) and payload and all(isinstance(k, str) and k.startswith("model.") and
                                                     isinstance(v, torch.Tensor) for k, v in payload.items()):
        raise AdapterLoadError(f"{path} is a plain state dict without the adapter's metadata (an exported bundle's "
                               "models/model.pt, kept for MONAI's ckpt_export); load models/model.safetensors")
    if not isinstance(payload, dict) or payload.get("format") != ADAPTER_FORMAT:
        raise AdapterLoadError(
            f"{path} is not a medsam_peft adapter file (format marker {payload.get('format') if isinstance(payload, dict) else None!r}, "
            f"expected {ADAPTER_FORMAT!r}); a full SAM checkpoint goes to build_sam(checkpoint=...)"
        )
    if not isinstance(payload.get("metadata"), dict) or not isinstance(payload.get("state_dict"), dict):
        raise AdapterLoadError(f"{path} is a damaged adapter file (no metadata or tensors); export it again")
    verify_checksum(payload["metadata"], payload["state_dict"], f"adapter file {path}")
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
    verify_checksum(meta, state, source)
    recorded_base = meta.get(BASE_CHECKSUM_KEY)
    if recorded_base and base_checksum(model) and recorded_base != base_checksum(model):
        warnings.warn(f"{source} was trained on other base weights than this model's (base checksum "
                      f"{recorded_base[:12]} vs {base_checksum(model)[:12]}): pass the checkpoint it was trained with",
                      stacklevel=2)
    problems = []
    if meta.get("tuner") != model.config.tuner_type:
        problems.append(f"tuner {meta.get('tuner')!r} in the file vs {model.config.tuner_type!r} in the model")
    if meta.get("backbone") != model.model.backbone:
        problems.append(f"backbone {meta.get('backbone')!r} in the file vs {model.model.backbone!r} in the model")
    theirs, ours = tuner_options_of(meta), model.config.to_dict()
    differing = sorted(k for k in set(theirs) | set(ours) if k != "init_weights" and theirs.get(k) != ours.get(k))
    if differing:
        problems.append("options differ: " + ", ".join(f"{k}={theirs.get(k)!r} (model: {ours.get(k)!r})" for k in differing))
    their_decoder, our_decoder = decoder_shape_of(meta), model.model.decoder_shape
    if their_decoder != our_decoder:
        problems.append(f"decoder {their_decoder} in the file vs {our_decoder} in the model (build it with these "
                        "mask_tokens / num_classes, or use load_tuned_sam, which reads them from the file)")
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


# An exported MONAI bundle keeps the adapter twice, a few MB each: models/model.safetensors (what load_tuned_sam,
# the label server and sharing read) and models/model.pt, the plain adapter-only state dict (``TunedSam`` names)
# that the model-zoo tools (``monai.bundle ckpt_export``, ignite's ``Checkpoint.load_objects``) load strictly into
# ``network_def`` (TunedSam accepts an adapter-only state dict: its frozen base comes from the base checkpoint).
BUNDLE_ADAPTER = "models/model.safetensors"
BUNDLE_STATE_DICT = "models/model.pt"


def bundle_adapter_file(bundle_dir: str | os.PathLike) -> Path:
    """The adapter of a bundle folder: ``models/model.safetensors``, or the ``models/model.pt`` adapter of bundles
    exported before safetensors."""
    bundle_dir = Path(bundle_dir)
    current = bundle_dir / BUNDLE_ADAPTER
    return current if current.is_file() or not (bundle_dir / BUNDLE_STATE_DICT).is_file() else bundle_dir / BUNDLE_STATE_DICT


def write_bundle_adapter(bundle_dir: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (``read_adapter``'s dict) as the bundle's adapter pair, each file atomically; the plain
    state dict first, so a reader that sees the new safetensors file finds its twin already written."""
    bundle_dir = Path(bundle_dir)
    atomic_torch_save({f"model.{k}": v for k, v in payload["state_dict"].items()}, bundle_dir / BUNDLE_STATE_DICT)
    return write_adapter_payload(payload, bundle_dir / BUNDLE_ADAPTER)

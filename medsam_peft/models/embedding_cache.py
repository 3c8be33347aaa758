"""Cache of a frozen image-encoder trunk's output, so that epochs after the first skip the ViT.

Tuners that leave the encoder trunk frozen (``decoder_only``; ``sam_parser`` on the neck) recompute the same trunk
features for the same image every epoch. ``TrunkEmbeddingCache`` keys them by the content of the encoder input (the
normalised image after all preprocessing, so a flipped or re-cropped image is a different key), its shape and dtype,
the autocast state and a fingerprint of the trunk weights; values live in memory up to a byte budget and optionally
on disk (one ``.pt`` file per image, written atomically, read with ``weights_only=True``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
import torch.nn as nn

from medsam_peft.errors import OutputDirError
from medsam_peft.utils.atomic_io import atomic_torch_save

logger = logging.getLogger(__name__)

def _vit_encoder_class() -> type[nn.Module]:
    from segment_anything.modeling import ImageEncoderViT

    return ImageEncoderViT


def vit_trunk(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``ImageEncoderViT.forward`` up to (not including) the neck: (B, S/16, S/16, C) tokens."""
    x = encoder.patch_embed(x)
    if encoder.pos_embed is not None:
        x = x + encoder.pos_embed
    for block in encoder.blocks:
        x = block(x)
    return x


def vit_neck(encoder: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return encoder.neck(tokens.permute(0, 3, 1, 2))


def cacheable_split(encoder: nn.Module, adapted: set[str]) -> str | None:
    """Where the frozen part of ``encoder`` ends: "encoder" (all of it is frozen), "neck" (a ViT whose neck alone is
    trained or adapted) or None (the trunk itself trains: nothing can be cached).

    ``adapted``: names, relative to ``encoder``, of submodules a tuner replaced or added.
    """
    trained = {name for name, p in encoder.named_parameters() if p.requires_grad} | adapted
    if not trained:
        return "encoder"
    if isinstance(encoder, _vit_encoder_class()) and all(name.startswith("neck.") for name in trained):
        return "neck"
    return None


def content_key(image: torch.Tensor, scope: str = "") -> str:
    """Hash of a tensor's content, shape and dtype, the autocast state it is computed under, and ``scope``."""
    digest = hashlib.sha1(scope.encode())
    autocast = torch.is_autocast_enabled(image.device.type)
    dtype = torch.get_autocast_dtype(image.device.type) if autocast else image.dtype
    digest.update(f"{tuple(image.shape)}|{image.dtype}|{dtype}|{autocast}".encode())
    digest.update(image.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # the buffer, no copy
    return digest.hexdigest()


def _fingerprint(module: nn.Module, skip_prefix: str | None = None) -> str:
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        if skip_prefix and name.startswith(skip_prefix):
            continue
        digest.update(name.encode())
        # reshape(-1): a 0-d tensor (BatchNorm's num_batches_tracked in TinyViT) cannot be viewed as bytes
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


class TrunkEmbeddingCache:
    """Content-addressed store of trunk outputs.

    Args:
        directory: also keep entries on disk here (survives restarts; shared by runs of the same backbone weights).
        max_memory_gib: in-memory budget; once full, new entries go to disk only (or are not kept). No eviction:
            every epoch visits every image, so evicting the oldest would turn each later look-up into a miss.
    """

    def __init__(self, directory: str | os.PathLike | None = None, max_memory_gib: float = 4.0) -> None:
        if max_memory_gib < 0:
            raise ValueError(f"max_memory_gib must be >= 0, got {max_memory_gib}")
        self.directory = None if directory is None else Path(directory)
        self.max_memory_bytes = int(max_memory_gib * 2**30)
        self.memory: dict[str, torch.Tensor] = {}
        self.memory_bytes = 0
        self.hits = 0
        self.misses = 0
        self.scope = ""  # set by ``bind``: which trunk (weights + split) the keys belong to

    def bind(self, encoder: nn.Module, split: str) -> None:
        """Tie keys to the weights of ``encoder`` before ``split`` ("encoder": all of it; "neck": all but the neck),
        so a cache directory shared by two backbones (or two fine-tuned necks) never returns the other's features."""
        self.scope = f"{split}-{_fingerprint(encoder, 'neck.' if split == 'neck' else None)}"

    def key(self, image: torch.Tensor) -> str:
        return content_key(image, self.scope)

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.pt"

    def get(self, key: str, device: torch.device) -> torch.Tensor | None:
        value = self.memory.get(key)
        if value is None and self.directory is not None and self._path(key).is_file():
            try:
                value = torch.load(self._path(key), map_location="cpu", weights_only=True)
            except Exception:  # a corrupt entry (disk full, edited by hand) is a miss, recomputed and rewritten
                self._path(key).unlink(missing_ok=True)
                value = None
            if value is not None:
                self._keep_in_memory(key, value)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        return value.to(device, non_blocking=True)

    def put(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().to("cpu", copy=True)
        self._keep_in_memory(key, value)
        if self.directory is not None and not self._path(key).exists():
            try:
                atomic_torch_save(value, self._path(key))
            except OutputDirError as err:  # a full cache disk slows later epochs down, it must not stop training
                logger.warning("trunk cache: %s; keeping entries in memory only from now on", err)
                self.directory = None

    def _keep_in_memory(self, key: str, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if key not in self.memory and self.memory_bytes + size <= self.max_memory_bytes:
            self.memory[key] = value
            self.memory_bytes += size

    def lookup_or_compute(self, images: torch.Tensor, compute) -> torch.Tensor:
        """Per-image look-up; the misses go through ``compute`` together (no autograd: the trunk is frozen)."""
        keys = [self.key(image) for image in images]
        found = [self.get(key, images.device) for key in keys]
        missing = [i for i, value in enumerate(found) if value is None]
        if missing:
            with torch.no_grad():
                computed = compute(images[missing])
            for i, value in zip(missing, computed):
                self.put(keys[i], value)
                found[i] = value
        return torch.stack(found)

    def stats(self) -> dict[str, float]:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self.memory),
                "memory_gib": self.memory_bytes / 2**30}




class ImageEmbeddingCache:
    """Bounded LRU of whole image embeddings for serving, keyed by the content of the encoder input.

    SAM is built so that an image is encoded once and each further prompt on it only runs the prompt encoder and
    the mask decoder (milliseconds); an annotator's second click on the same slice must not pay for the encoder
    again. Keys hash the network input tensor (after resizing and padding), its shape and dtype and the autocast
    dtype; values are kept on the model's device. Thread-safe; ``max_entries=0`` disables it.
    """

    def __init__(self, max_entries: int = 16) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        import threading
        from collections import OrderedDict

        self.max_entries = int(max_entries)
        self.entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def get_or_compute(self, image: torch.Tensor, compute, scope: str = "") -> torch.Tensor:
        """The embedding of ``image`` (one batch, looked up as a whole), computing and keeping it on a miss."""
        key = content_key(image, scope)
        with self._lock:
            value = self.entries.get(key)
            if value is not None:
                self.entries.move_to_end(key)
                self.hits += 1
                return value
            self.misses += 1
        value = compute(image)
        if self.max_entries:
            with self._lock:
                self.entries[key] = value.detach()
                self.entries.move_to_end(key)
                while len(self.entries) > self.max_entries:
                    self.entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()


__all__ = ["ImageEmbeddingCache", "TrunkEmbeddingCache", "cacheable_split", "vit_neck", "vit_trunk"]

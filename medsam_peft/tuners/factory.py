"""Entry points that assemble a backbone and a tuner: what bundles' ``network_def`` and the CLI call."""

from __future__ import annotations

import os
from typing import Any

import torch
from segment_anything.modeling import ImageEncoderViT

from medsam_peft.errors import ConfigError
from medsam_peft.models.activation_checkpointing import set_activation_checkpointing
from medsam_peft.models.attention import ATTENTION_BACKENDS, set_attention_backend
from medsam_peft.models.build import build_sam
from medsam_peft.models.embedding_cache import TrunkEmbeddingCache
from medsam_peft.models.promptable_sam import SEMANTIC_OUTPUTS, PromptableSam, reference_queries
from medsam_peft.tuners.adapter_io import (
    decoder_shape_of,
    load_adapter,
    read_adapter,
    tuner_options_of,
)
from medsam_peft.tuners.base import TunedSam, TunerConfig
from medsam_peft.tuners.registry import get_tuner_classes, make_tuner_config


def get_tuned_model(model: PromptableSam, tuner: str | dict[str, Any] | TunerConfig, **options: Any) -> TunedSam:
    """Apply a tuner to ``model`` in place (PEFT's ``get_peft_model``)."""
    config = make_tuner_config(tuner, **options)
    _, model_cls = get_tuner_classes(config.tuner_type)
    return model_cls(model, config)


def build_tuned_sam(
    backbone: str = "vit_b",
    checkpoint: str | os.PathLike | None = None,
    tuner: str | dict[str, Any] | TunerConfig = "conv_lora",
    image_size: int | None = None,
    adapter: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    tuner_options: dict[str, Any] | None = None,
    *,
    trunk_cache: str | os.PathLike = "off",
    trunk_cache_gib: float = 2.0,
    activation_checkpointing: bool = False,
    attention: str = "auto",
    mask_tokens: int | None | str = "reference",
    num_classes: int | None = None,
    query_init: str | None = None,
) -> TunedSam:
    """Build ``backbone`` (from ``checkpoint``), apply ``tuner`` and optionally load an adapter file.

    This is the ``network_def`` target of every training bundle: the returned model is already tuned, so a
    bundle's checkpoint only needs the trainable tensors.

    Decoder shape (the model's, applied before the tuner):
        mask_tokens: mask tokens to keep (``None``: SAM's four; ``"reference"``: the decoder the tuner's paper
            counts with, ``TunerConfig.reference_mask_tokens``: 1 for Conv-LoRA and its baselines, SAM's four for
            SAM-PARSER, FacT and full fine-tuning).
        num_classes: classes with the background for the multi-class decoder.
        query_init: its queries (``PromptableSam.set_semantic_queries``): ``"class"`` (default: one query per
            class, ``mask_tokens`` null or ``num_classes``; "reference" means that here), ``"perturbed"`` or
            ``"token0"`` (the Conv-LoRA reference; both Hungarian-matched, ``mask_tokens`` queries).

    Fast paths (README "Performance"):
        trunk_cache: "off"; "auto" (in-memory cache when the tuner leaves the encoder trunk frozen, else off);
            "memory" (the same, refusing tuners that train the trunk); or a directory, to keep entries on disk too.
        trunk_cache_gib: in-memory budget of the cache.
        activation_checkpointing: recompute encoder blocks in backward instead of storing their activations.
        attention: "eager" (the official attention), "sdpa" (``scaled_dot_product_attention``, same function),
            "chunked" (query blocks, nothing (HW, HW) kept for backward) or "auto" (chunked for global attention from
            512² inputs; windowed attention through SDPA for inference and the official code in training: see
            models/attention.py).
    """
    config = make_tuner_config(tuner, **(tuner_options or {}))
    if mask_tokens == "reference":
        mask_tokens = reference_queries(config.reference_mask_tokens, num_classes, query_init)
    elif isinstance(mask_tokens, str):
        raise ConfigError(f"mask_tokens must be an integer, null (SAM's four) or 'reference', got {mask_tokens!r}")
    model = build_sam(backbone, checkpoint, image_size=image_size, device=device, mask_tokens=mask_tokens,
                      num_classes=num_classes, query_init=query_init)
    tuned = get_tuned_model(model, config)
    if adapter is not None:
        load_adapter(tuned, adapter)
    if attention not in ATTENTION_BACKENDS:
        raise ConfigError(f"attention must be one of {ATTENTION_BACKENDS}, got {attention!r}")
    if attention != "eager" and isinstance(model.image_encoder, ImageEncoderViT):
        set_attention_backend(model.image_encoder, attention)
    if activation_checkpointing:
        set_activation_checkpointing(model.image_encoder, True)
    mode = str(trunk_cache)
    if mode not in ("off", "auto") or (mode == "auto" and tuned.trunk_cache_split() is not None):
        directory = None if mode in ("auto", "memory") else os.fspath(trunk_cache)
        tuned.enable_trunk_cache(TrunkEmbeddingCache(directory, max_memory_gib=trunk_cache_gib))
    return tuned


def load_tuned_sam(
    adapter: str | os.PathLike, checkpoint: str | os.PathLike | None = None, device: str | torch.device | None = None,
    semantic_output: str = "queries",
) -> TunedSam:
    """Rebuild a tuned model from an adapter file: backbone, image size and tuner options come from its metadata.

    ``semantic_output`` (multi-class models): ``"queries"`` (the forward returns {"masks", "classes"}) or
    ``"probabilities"`` ((B, C, S, S) per-class probabilities: an exported bundle's ``network_def``)."""
    if semantic_output not in SEMANTIC_OUTPUTS:
        raise ConfigError(f"semantic_output must be one of {SEMANTIC_OUTPUTS}, got {semantic_output!r}")
    meta = read_adapter(adapter)["metadata"]
    shape = decoder_shape_of(meta)
    tuned = build_tuned_sam(
        meta["backbone"], checkpoint, tuner_options_of(meta), image_size=meta["image_size"], adapter=adapter,
        device=device, mask_tokens=shape["mask_tokens"], num_classes=shape["num_classes"],
        query_init=shape.get("query_init"),
    )
    tuned.model.semantic_output = semantic_output
    return tuned

"""The tuner contract, modelled on PEFT's ``BaseTuner`` / ``BaseTunerLayer`` but sized for SAM.

A tuner is a ``TunerConfig`` subclass (options, default targets) plus a ``TunedSam`` subclass that builds one
replacement layer per targeted module. The base owns everything else: matching, freezing, which decoder parts
train, auxiliary losses, merging, and adapter-only saving/loading (``medsam_peft.tuners.adapter_io``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn as nn
from segment_anything.modeling.image_encoder import ImageEncoderViT

from medsam_peft.errors import ConfigError
from medsam_peft.models.embedding_cache import TrunkEmbeddingCache, cacheable_split
from medsam_peft.models.promptable_sam import PromptableSam

# Tuner options of files written before the decoder shape became a model option (read by adapter_io).
DECODER_SHAPE_KEYS = ("mask_tokens", "num_classes")


@dataclasses.dataclass
class TunerConfig:
    """Options shared by every tuner.

    Args:
        target_modules: regular expression that must fully match a module's qualified name (for example
            ``image_encoder\\.blocks\\.\\d+\\.attn\\.qkv``); ``None`` uses the tuner's default.
        exclude_modules: regular expression of qualified names never adapted, even when targeted.
        trainable_modules: regular expressions of modules trained in full (PEFT's ``modules_to_save``).
        frozen_modules: regular expressions of modules kept frozen even inside ``trainable_modules``.
        init_weights: start as the identity (True) or with random adapter weights (False, for tests).

    The decoder's shape (mask tokens, classes) is the model's, not the tuner's: ``build_sam(mask_tokens=...,
    num_classes=...)`` / the bundles' top-level ``mask_tokens`` and ``num_classes``. ``reference_mask_tokens`` only
    records the decoder the tuner's paper pairs it with, used where the caller asks for ``mask_tokens="reference"``.
    """

    target_modules: str | None = None
    exclude_modules: str | None = None
    trainable_modules: tuple[str, ...] = ("mask_decoder",)
    frozen_modules: tuple[str, ...] = ("mask_decoder.iou_prediction_head",)
    init_weights: bool = True

    tuner_type: ClassVar[str] = ""
    default_target_modules: ClassVar[str | None] = None
    # Tuners that rely on ImageEncoderViT's uniform width, token grid or block list (VPT, LST, SAM-Adapter, FacT).
    requires_vit_encoder: ClassVar[bool] = False
    # The Conv-LoRA paper's binary decoder: one mask token, one hypernetwork MLP (its parameter counts assume it);
    # None = SAM's four tokens, as SAM-PARSER's paper counts.
    reference_mask_tokens: ClassVar[int | None] = 1

    def __post_init__(self) -> None:
        self.trainable_modules = tuple(self.trainable_modules)
        self.frozen_modules = tuple(self.frozen_modules)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending option."""
        for field in ("target_modules", "exclude_modules"):
            pattern = getattr(self, field)
            if pattern is not None:
                compile_pattern(pattern, field)
        for field in ("trainable_modules", "frozen_modules"):
            for pattern in getattr(self, field):
                compile_pattern(pattern, field)

    def require_positive_ints(self, *fields: str) -> None:
        """Raise ``ValueError`` naming the first of ``fields`` that is not a positive integer."""
        for field in fields:
            if int(getattr(self, field)) <= 0:
                raise ConfigError(f"{field} must be a positive integer, got {getattr(self, field)}")

    def require_fractions(self, *fields: str) -> None:
        """Raise ``ValueError`` naming the first of ``fields`` outside [0, 1) (dropout rates and the like)."""
        for field in fields:
            if not 0.0 <= float(getattr(self, field)) < 1.0:
                raise ConfigError(f"{field} must be in [0, 1), got {getattr(self, field)}")

    @property
    def effective_target_modules(self) -> str | None:
        return self.target_modules if self.target_modules is not None else self.default_target_modules

    def to_dict(self) -> dict[str, Any]:
        options = dataclasses.asdict(self)
        options["trainable_modules"] = list(self.trainable_modules)
        options["frozen_modules"] = list(self.frozen_modules)
        return {"tuner": self.tuner_type, **options}

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> TunerConfig:
        options = {k: v for k, v in options.items() if k != "tuner"}
        known = {f.name for f in dataclasses.fields(cls)}
        moved = sorted(set(options) & set(DECODER_SHAPE_KEYS))
        if moved:
            raise ConfigError(
                f"{moved[0]} is not a tuner option: the decoder's shape belongs to the model; set the top-level "
                f"setting '{moved[0]}' (--{moved[0]} N on the bundle command line) or build_tuned_sam({moved[0]}=...)"
            )
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} for tuner {cls.tuner_type!r}; known: {sorted(known)}")
        return cls(**options)


def compile_pattern(pattern: str, field: str) -> re.Pattern[str]:
    """``re.compile`` for a tuner option; an invalid expression is a ``ConfigError`` naming the option."""
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"{field}={pattern!r} is not a valid regular expression: {err}") from None


def _within(name: str, patterns: tuple[str, ...]) -> bool:
    """True if ``name`` (a parameter or module name) lies inside a module whose name fully matches a pattern."""
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(re.fullmatch(p, prefix) for p in patterns for prefix in prefixes)


class BaseTunerLayer:
    """Mixin for a layer that wraps ``base_layer`` and adds adapter parameters named with the tuner's prefix."""

    base_layer: nn.Module
    supports_merge: ClassVar[bool] = False
    merge_unsupported_reason: ClassVar[str] = "its update is not a linear function of the input"
    # True where a step sends each input to some of the layer's parameters only (Conv-LoRA's experts): DDP must then
    # search for parameters without a gradient.
    routes_inputs: ClassVar[bool] = False
    merged: bool = False

    def delta_weight(self) -> torch.Tensor:
        """The change to ``base_layer.weight`` that this adapter represents (mergeable tuners only)."""
        raise NotImplementedError

    def merge(self) -> None:
        if not self.supports_merge:
            raise NotImplementedError(f"{type(self).__name__} cannot be merged: {self.merge_unsupported_reason}")
        if not self.merged:
            with torch.no_grad():
                self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            with torch.no_grad():
                self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = False

    def aux_loss(self) -> torch.Tensor | None:
        """Auxiliary loss of the last forward pass (Conv-LoRA's load balancing); None if the tuner has none."""
        return None


class TunedSam(nn.Module):
    """A ``PromptableSam`` with a tuner applied in place; ``forward`` is the model's forward.

    Subclasses set ``prefix`` (a name part of every adapter parameter starts with it; a tuple for tuners that combine
    others' layers) and implement ``_create_layer``. Tuners with modules shared by all layers (FacT's factors, LST's
    side network) attach them to the image encoder in ``_inject`` so that they are saved and counted with the model.
    """

    prefix: ClassVar[str | tuple[str, ...]] = ""
    # False for tuners whose added parameters act from the first step (e.g. VPT's prompt tokens).
    identity_at_init: ClassVar[bool] = True

    def __init__(self, model: PromptableSam, config: TunerConfig) -> None:
        super().__init__()
        if not isinstance(model, PromptableSam):
            raise TypeError(f"expected a PromptableSam, got {type(model).__name__}")
        if config.requires_vit_encoder and not isinstance(model.image_encoder, ImageEncoderViT):
            raise ConfigError(
                f"tuner {config.tuner_type!r} needs a SAM ViT image encoder (vit_b, vit_l, vit_h, MedSAM or vit_tiny); "
                f"backbone {model.backbone!r} has a {type(model.image_encoder).__name__}. Use lora, conv_lora, "
                f"adapter, ssf, bitfit or sam_parser with it"
            )
        self.model = model
        self.config = config
        self.targeted_module_names = self._inject()
        self._mark_trainable()
        self.register_load_state_dict_post_hook(_accept_adapter_only_state)

    # ---- injection -------------------------------------------------------------------------------------------
    def _create_layer(self, name: str, target: nn.Module) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} does not replace layers")

    def _matched_module_names(self) -> list[str]:
        pattern = self.config.effective_target_modules
        if pattern is None:
            return []
        exclude = self.config.exclude_modules
        names = [
            name
            for name, _ in self.model.named_modules()
            if name and re.fullmatch(pattern, name) and not (exclude and re.fullmatch(exclude, name))
        ]
        if not names:
            raise ValueError(
                f"target_modules={pattern!r} matched no module of the {self.model.backbone} model "
                f"(module names look like 'image_encoder.blocks.0.attn.qkv' or 'image_encoder.neck.0')"
            )
        return names

    def _inject(self) -> list[str]:
        names = self._matched_module_names()
        for name in names:
            parent_name, _, attr = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, attr, self._create_layer(name, getattr(parent, attr)))
        return names

    def is_adapter_parameter(self, name: str) -> bool:
        prefixes = (self.prefix,) if isinstance(self.prefix, str) else tuple(self.prefix)
        prefixes = tuple(p for p in prefixes if p)
        return any(part.startswith(prefixes) for part in name.split(".")) if prefixes else False

    def _mark_trainable(self) -> None:
        cfg = self.config
        for name, param in self.model.named_parameters():
            trainable = self.is_adapter_parameter(name) or _within(name, cfg.trainable_modules)
            param.requires_grad_(trainable and not _within(name, cfg.frozen_modules))

    def adapter_state_keys(self) -> set[str]:
        """``state_dict`` names of the trainable tensors (an adapter-only state dict has exactly these)."""
        return {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}

    # ---- running ---------------------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model(*args, **kwargs)

    def forward_with_low_res(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_low_res(*args, **kwargs)

    @property
    def image_size(self) -> int:
        return self.model.image_size

    def train(self, mode: bool = True) -> TunedSam:
        super().train(mode)
        # Frozen BatchNorm layers (TinyViT's MBConv) must not update their running statistics while tuning.
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters()
            ):
                module.eval()
        return self

    def tuner_layers(self) -> Iterator[tuple[str, BaseTunerLayer]]:
        for name, module in self.model.named_modules():
            if isinstance(module, BaseTunerLayer):
                yield name, module

    def aux_loss(self) -> torch.Tensor:
        """Sum of the layers' auxiliary losses from the last forward (zero for tuners without one), plus a loss the
        model's forward left pending (the IoU head's in multimask training)."""
        losses = [loss for _, layer in self.tuner_layers() if (loss := layer.aux_loss()) is not None]
        take = getattr(self.model, "take_pending_loss", None)
        if take is not None and (pending := take()) is not None:
            losses.append(pending)
        if not losses:
            return torch.zeros((), device=next(self.model.parameters()).device)
        return torch.stack(losses).sum()

    # ---- fast paths ------------------------------------------------------------------------------------------
    def trunk_cache_split(self) -> str | None:
        """Where this tuner's frozen encoder part ends ("encoder", "neck") or None if the trunk itself trains."""
        adapted = {
            name[len("image_encoder."):]
            for name, _ in self.tuner_layers()
            if name.startswith("image_encoder.")
        }
        return cacheable_split(self.model.image_encoder, adapted)

    def enable_trunk_cache(self, cache: TrunkEmbeddingCache | None = None) -> TrunkEmbeddingCache:
        """Compute the frozen encoder trunk once per distinct input image (see ``TrunkEmbeddingCache``)."""
        split = self.trunk_cache_split()
        if split is None:
            raise ValueError(
                f"tuner {self.config.tuner_type!r} trains the image encoder's trunk, so its output changes every step "
                f"and cannot be cached; use trunk_cache='off' (caching suits decoder_only and sam_parser on the neck)"
            )
        return self.model.enable_trunk_cache(cache or TrunkEmbeddingCache(), split)

    def disable_trunk_cache(self) -> None:
        self.model.disable_trunk_cache()

    # ---- merging ---------------------------------------------------------------------------------------------
    def merge_adapter(self) -> None:
        for _, layer in self.tuner_layers():
            layer.merge()

    def unmerge_adapter(self) -> None:
        for _, layer in self.tuner_layers():
            layer.unmerge()

    def merge_and_unload(self) -> PromptableSam:
        """Fold every adapter into its base layer and return the plain model (decoder updates stay in place)."""
        self.merge_adapter()
        for name, layer in list(self.tuner_layers()):
            parent_name, _, attr = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, attr, layer.base_layer)
        for param in self.model.parameters():
            param.requires_grad_(False)
        return self.model

    # ---- reporting -------------------------------------------------------------------------------------------
    def parameter_report(self) -> dict[str, Any]:
        """Trainable and total parameter counts, with trainable counts split into adapter and full modules."""
        groups: dict[str, int] = {}
        trainable = total = 0
        for name, param in self.model.named_parameters():
            total += param.numel()
            if param.requires_grad:
                trainable += param.numel()
                group = "adapter" if self.is_adapter_parameter(name) else name.split(".")[0]
                groups[group] = groups.get(group, 0) + param.numel()
        return {
            "tuner": self.config.tuner_type,
            "backbone": self.model.backbone,
            "trainable": trainable,
            "total": total,
            "ratio": trainable / total if total else 0.0,
            "trainable_by_group": groups,
        }


def _accept_adapter_only_state(module: TunedSam, incompatible: Any) -> None:
    """``load_state_dict`` of an adapter-only state dict (every trainable tensor, no frozen one: an exported bundle's
    ``models/model.pt``, which MONAI's ``ckpt_export`` loads strictly) keeps the frozen base the model was built
    with. A dict that holds some frozen tensors, or lacks a trainable one, stays a strict mismatch."""
    missing = set(incompatible.missing_keys)
    frozen = {f"model.{n}" for n, p in module.model.named_parameters() if not p.requires_grad}
    if missing and frozen <= missing and not missing & module.adapter_state_keys():
        incompatible.missing_keys.clear()  # frozen parameters and buffers: the base checkpoint's values stay

"""SAM-PARSER combined with LoRA: coefficients of the neck's bases plus low-rank updates that add new bases."""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

import torch.nn as nn

from medsam_peft.tuners.base import TunedSam, _compile
from medsam_peft.tuners.lora.layer import LoraLinear
from medsam_peft.tuners.registry import register_tuner
from medsam_peft.tuners.sam_parser.config import SamParserConfig
from medsam_peft.tuners.sam_parser.layer import SvdCoefficientLayer


@dataclasses.dataclass
class SamParserLoraConfig(SamParserConfig):
    """The SAM-PARSER paper's suggested fix for its failure case (radar images, whose parameter space the pretrained
    bases cannot span): keep SAM-PARSER's trainable singular values and add LoRA to expand the bases.

    SAM-PARSER's options apply to the decomposed layers; LoRA adds rank-``r`` updates to ``lora_target_modules``
    (default every block's fused qkv). ``r=4``, ``alpha=4`` (scaling 1, SAMed's LoRA) is the paper's LoRA baseline:
    144K on ViT-B; with the neck's 512 coefficients and the decoder: 4,206,308. Mergeable.

    Args:
        r, alpha, lora_dropout: LoRA's rank, scaling numerator and input dropout.
        lora_target_modules: regular expression of the Linear layers that get LoRA.
    """

    r: int = 4
    alpha: float = 4.0
    lora_dropout: float = 0.0
    lora_target_modules: str = r"image_encoder\..*attn\.qkv"

    tuner_type: ClassVar[str] = "sam_parser_lora"

    def validate(self) -> None:
        super().validate()
        _compile(self.lora_target_modules, "lora_target_modules")
        self.require_positive_ints("r")
        self.require_fractions("lora_dropout")

    @property
    def effective_target_modules(self) -> str | None:
        return f"({super().effective_target_modules})|({self.lora_target_modules})"


class SamParserLoraModel(TunedSam):
    prefix: ClassVar[tuple[str, ...]] = ("sam_parser_", "lora_")
    config: SamParserLoraConfig

    def _create_layer(self, name: str, target: nn.Module) -> nn.Module:
        cfg = self.config
        in_lora = re.fullmatch(cfg.lora_target_modules, name) is not None
        in_svd = re.fullmatch(SamParserConfig.effective_target_modules.fget(cfg), name) is not None
        if in_lora and in_svd:
            raise ValueError(f"{name} is targeted by both SAM-PARSER and LoRA; narrow target_modules or lora_target_modules")
        if in_lora:
            return LoraLinear(target, cfg.r, cfg.alpha, cfg.lora_dropout, cfg.init_weights)
        return SvdCoefficientLayer(target, cfg.spectral_shift, cfg.init_weights)


register_tuner("sam_parser_lora", SamParserLoraConfig, SamParserLoraModel)

__all__ = ["SamParserLoraConfig", "SamParserLoraModel"]

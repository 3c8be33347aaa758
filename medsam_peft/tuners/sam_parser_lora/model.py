from __future__ import annotations

import re
from typing import ClassVar

import torch.nn as nn

from medsam_peft.errors import ConfigError
from medsam_peft.tuners.base import TunedSam
from medsam_peft.tuners.lora.layer import LoraLinear
from medsam_peft.tuners.sam_parser.layer import SvdCoefficientLayer
from medsam_peft.tuners.sam_parser_lora.config import SamParserLoraConfig


class SamParserLoraModel(TunedSam):
    """SAM-PARSER's coefficient layers on the decomposed layers, LoRA on the others it targets; mergeable."""

    prefix: ClassVar[tuple[str, ...]] = ("sam_parser_", "lora_")
    config: SamParserLoraConfig

    def _create_layer(self, name: str, target: nn.Module) -> nn.Module:
        cfg = self.config
        in_lora = re.fullmatch(cfg.lora_target_modules, name) is not None
        in_svd = re.fullmatch(cfg.svd_target_modules, name) is not None
        if in_lora and in_svd:
            raise ConfigError(f"{name} is targeted by both SAM-PARSER and LoRA; narrow target_modules or "
                              "lora_target_modules")
        if in_lora:
            return LoraLinear(target, cfg.r, cfg.alpha, cfg.lora_dropout, cfg.init_weights)
        return SvdCoefficientLayer(target, cfg.spectral_shift, cfg.init_weights)

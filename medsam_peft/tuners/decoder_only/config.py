from __future__ import annotations

import dataclasses
from typing import ClassVar

from medsam_peft.errors import ConfigError
from medsam_peft.tuners.base import TunerConfig


@dataclasses.dataclass
class DecoderOnlyConfig(TunerConfig):
    """Decoder-only fine-tuning: the whole image encoder stays frozen; ``trainable_modules`` (default: the mask decoder
    without its IoU head, one mask token) train. The Conv-LoRA paper's baseline: 3,505,536 trainable parameters on
    every SAM size."""

    trainable_modules: tuple[str, ...] = ("mask_decoder",)
    frozen_modules: tuple[str, ...] = ("mask_decoder.iou_prediction_head",)

    tuner_type: ClassVar[str] = "decoder_only"
    default_target_modules: ClassVar[str | None] = None  # adapts no layer

    def validate(self) -> None:
        super().validate()
        if self.target_modules is not None:
            raise ConfigError("decoder_only adapts no encoder layer; remove target_modules or choose another tuner")

"""Decoder-only fine-tuning: the whole image encoder stays frozen; the mask decoder (minus the IoU head) trains.

The Conv-LoRA paper's baseline: 3,505,536 trainable parameters on every SAM size (single mask token). Nothing to merge.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from medsam_peft.tuners.base import TunedSam, TunerConfig
from medsam_peft.tuners.registry import register_tuner


@dataclasses.dataclass
class DecoderOnlyConfig(TunerConfig):
    """Train only ``trainable_modules`` (default: the mask decoder without its IoU head)."""

    tuner_type: ClassVar[str] = "decoder_only"

    def validate(self) -> None:
        super().validate()
        if self.target_modules is not None:
            raise ValueError("decoder_only adapts no encoder layer; remove target_modules or choose another tuner")


class DecoderOnlyModel(TunedSam):
    prefix: ClassVar[str] = ""


register_tuner("decoder_only", DecoderOnlyConfig, DecoderOnlyModel)

__all__ = ["DecoderOnlyConfig", "DecoderOnlyModel"]

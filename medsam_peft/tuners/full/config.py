from __future__ import annotations

import dataclasses
from typing import ClassVar

from medsam_peft.errors import ConfigError
from medsam_peft.tuners.base import TunerConfig


@dataclasses.dataclass
class FullConfig(TunerConfig):
    """Full fine-tuning: every SAM parameter trains, the upper bound the parameter-efficient tuners are compared with
    (641,090,608 on ViT-H, the Conv-LoRA paper's "641.09M / 100%" row).

    Trains ``trainable_modules`` (default: image encoder, prompt encoder and mask decoder) in full. ``mask_tokens``
    defaults to SAM's four so that the count is SAM's own; set it to 1 for the binary decoder.
    """

    trainable_modules: tuple[str, ...] = ("image_encoder", "prompt_encoder", "mask_decoder")
    frozen_modules: tuple[str, ...] = ()
    mask_tokens: int | None = None

    tuner_type: ClassVar[str] = "full"
    default_target_modules: ClassVar[str | None] = None  # adapts no layer

    def validate(self) -> None:
        super().validate()
        if self.target_modules is not None:
            raise ConfigError("full fine-tuning adapts no layer; remove target_modules (use trainable_modules)")

from __future__ import annotations

import dataclasses
from typing import ClassVar

from medsam_peft.errors import ConfigError
from medsam_peft.tuners.base import TunerConfig


@dataclasses.dataclass
class FullConfig(TunerConfig):
    """Full fine-tuning: every SAM parameter trains, the upper bound the parameter-efficient tuners are compared with
    (641,090,608 on ViT-H, the Conv-LoRA paper's "641.09M / 100%" row).

    Trains ``trainable_modules`` (default: image encoder, prompt encoder and mask decoder) in full. Its reference
    decoder keeps SAM's four mask tokens so that the count is SAM's own; build with ``mask_tokens=1`` for the binary one.
    """

    trainable_modules: tuple[str, ...] = ("image_encoder", "prompt_encoder", "mask_decoder")
    frozen_modules: tuple[str, ...] = ()

    reference_mask_tokens: ClassVar[int | None] = None  # SAM's four: the count is SAM's own
    tuner_type: ClassVar[str] = "full"
    default_target_modules: ClassVar[str | None] = None  # adapts no layer

    def validate(self) -> None:
        super().validate()
        if self.target_modules is not None:
            raise ConfigError("full fine-tuning adapts no layer; remove target_modules (use trainable_modules)")

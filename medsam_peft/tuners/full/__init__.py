"""Full fine-tuning: every SAM parameter trains. The upper bound the parameter-efficient tuners are compared with.

On ViT-H this is 641,090,608 parameters (the Conv-LoRA paper's "641.09M / 100%" row). Nothing to merge.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from medsam_peft.tuners.base import TunedSam, TunerConfig
from medsam_peft.tuners.registry import register_tuner


@dataclasses.dataclass
class FullConfig(TunerConfig):
    """Train ``trainable_modules`` (default: image encoder, prompt encoder and mask decoder) in full.

    ``mask_tokens`` defaults to SAM's four so that the count is SAM's own; set it to 1 for the binary decoder.
    """

    trainable_modules: tuple[str, ...] = ("image_encoder", "prompt_encoder", "mask_decoder")
    frozen_modules: tuple[str, ...] = ()
    mask_tokens: int | None = None

    tuner_type: ClassVar[str] = "full"

    def validate(self) -> None:
        super().validate()
        if self.target_modules is not None:
            raise ValueError("full fine-tuning adapts no layer; remove target_modules (use trainable_modules)")


class FullModel(TunedSam):
    prefix: ClassVar[str] = ""


register_tuner("full", FullConfig, FullModel)

__all__ = ["FullConfig", "FullModel"]

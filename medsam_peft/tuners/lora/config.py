from __future__ import annotations

import dataclasses
from typing import ClassVar

from medsam_peft.tuners.base import TunerConfig


@dataclasses.dataclass
class LoraConfig(TunerConfig):
    """LoRA (Hu et al., 2021, arXiv 2106.09685) on the fused ``qkv`` projection of every encoder block.

    Trains a rank-``r`` update ``(alpha / r) * B A`` beside each frozen weight, plus the mask decoder without its IoU
    head (the Conv-LoRA paper's LoRA baseline: r=3 gives 3,997,056 trainable parameters on ViT-H). Mergeable.

    Args:
        r: rank of the update.
        alpha: scaling numerator; the update is multiplied by ``alpha / r``.
        dropout: dropout on the adapter input (0 in the reference).
    """

    r: int = 3
    alpha: float = 32.0
    dropout: float = 0.0

    tuner_type: ClassVar[str] = "lora"
    # Matches SAM ViT blocks and LiteMedSAM's TinyViT blocks (image_encoder.layers.i.blocks.j.attn.qkv).
    default_target_modules: ClassVar[str | None] = r"image_encoder\..*attn\.qkv"

    def validate(self) -> None:
        super().validate()
        self.require_positive_ints("r")
        self.require_fractions("dropout")

from __future__ import annotations

import dataclasses
from typing import ClassVar

from medsam_peft.tuners.lora.config import LoraConfig


@dataclasses.dataclass
class ConvLoraConfig(LoraConfig):
    """Conv-LoRA (Zhong et al., ICLR 2024, arXiv 2401.17868): LoRA whose rank-r bottleneck holds a mixture of
    multi-scale 3x3 convolution experts chosen per window by a noisy top-1 gate.

    Trains the adapters of every encoder block's fused ``qkv`` plus the mask decoder without its IoU head
    (4,020,096 parameters on ViT-H with r=3 and 8 experts). Not mergeable: the experts are non-linear.

    Args:
        r: bottleneck rank (reference 3).
        dropout: dropout on the adapter input (0 in the reference).
        alpha: scaling numerator, update scaled by ``alpha / r`` (reference 32).
        num_experts: experts with up-scaling factors 1..num_experts (reference 8).
        noisy_gating: Gaussian exploration noise on the gate logits while training (reference True).
        aux_loss_coef: weight of the load-balancing loss per layer (reference 0.01).
    """

    r: int = 3
    alpha: float = 32.0
    dropout: float = 0.0
    num_experts: int = 8
    noisy_gating: bool = True
    aux_loss_coef: float = 0.01

    tuner_type: ClassVar[str] = "conv_lora"
    # The reference adapts the fused qkv of every encoder block (SAM ViT and LiteMedSAM's TinyViT alike).
    default_target_modules: ClassVar[str | None] = r"image_encoder\..*attn\.qkv"

    def validate(self) -> None:
        super().validate()
        if int(self.num_experts) < 2:
            raise ValueError(f"num_experts must be >= 2 (top-1 gating needs a runner-up), got {self.num_experts}")

from __future__ import annotations

from typing import ClassVar

import torch.nn as nn

from medsam_peft.tuners.base import TunedSam
from medsam_peft.tuners.conv_lora.config import ConvLoraConfig
from medsam_peft.tuners.conv_lora.layer import ConvLoraLinear


class ConvLoraModel(TunedSam):
    prefix: ClassVar[str] = "conv_lora_"
    config: ConvLoraConfig

    def _create_layer(self, name: str, target: nn.Module) -> nn.Module:
        c = self.config
        return ConvLoraLinear(
            target, c.r, c.alpha, c.num_experts, c.noisy_gating, c.aux_loss_coef, c.dropout, c.init_weights
        )

from __future__ import annotations

from typing import ClassVar

import torch.nn as nn

from medsam_peft.tuners.base import TunedSam
from medsam_peft.tuners.lora.config import LoraConfig
from medsam_peft.tuners.lora.layer import LoraLinear


class LoraModel(TunedSam):
    prefix: ClassVar[str] = "lora_"
    config: LoraConfig

    def _create_layer(self, name: str, target: nn.Module) -> nn.Module:
        return LoraLinear(target, self.config.r, self.config.alpha, self.config.dropout, self.config.init_weights)

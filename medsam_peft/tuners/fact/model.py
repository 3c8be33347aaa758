from __future__ import annotations

from typing import ClassVar

import torch.nn as nn

from medsam_peft.tuners.base import TunedSam
from medsam_peft.tuners.fact.config import FactConfig
from medsam_peft.tuners.fact.layer import FactorisedLinear, SharedFactors


class FactModel(TunedSam):
    prefix: ClassVar[str] = "fact_"
    config: FactConfig

    def _inject(self) -> list[str]:
        encoder = self.model.image_encoder
        weight = encoder.patch_embed.proj.weight
        encoder.fact_factors = SharedFactors(
            weight.shape[0], int(self.config.r), self.config.init_weights, weight.device, weight.dtype
        )
        return super()._inject()

    def _create_layer(self, name: str, target: nn.Module) -> nn.Module:
        cfg = self.config
        return FactorisedLinear(target, self.model.image_encoder.fact_factors, cfg.scale, cfg.dropout)

from __future__ import annotations

from typing import ClassVar

import torch.nn as nn

from medsam_peft.tuners.base import TunedSam
from medsam_peft.tuners.lst.config import LstConfig
from medsam_peft.tuners.lst.layer import LadderTap, SideFusion, SideNetwork


class LstModel(TunedSam):
    prefix: ClassVar[str] = "lst_"
    config: LstConfig

    def _inject(self) -> list[str]:
        encoder = self.model.image_encoder
        cfg = self.config
        width = cfg.width(encoder.blocks[0].attn.proj.in_features)
        encoder.lst_side = SideNetwork(encoder, width, int(cfg.side_heads), cfg.gate_temperature, cfg.init_weights)
        return super()._inject()

    def _create_layer(self, name: str, target: nn.Module) -> nn.Module:
        side = self.model.image_encoder.lst_side
        if name == "image_encoder.neck":
            return SideFusion(target, side)
        return LadderTap(target, side, int(name.rsplit(".", 1)[1]))

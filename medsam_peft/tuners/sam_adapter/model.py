from __future__ import annotations

from typing import ClassVar

import torch.nn as nn

from medsam_peft.tuners.base import TunedSam
from medsam_peft.tuners.sam_adapter.config import SamAdapterConfig
from medsam_peft.tuners.sam_adapter.layer import PromptedBlock, PromptGenerator, PromptSource


class SamAdapterModel(TunedSam):
    prefix: ClassVar[str] = "sam_adapter_"
    config: SamAdapterConfig

    def _inject(self) -> list[str]:
        encoder = self.model.image_encoder
        cfg = self.config
        encoder.sam_adapter_generator = PromptGenerator(encoder, cfg.scale_factor, cfg.freq_nums, cfg.init_weights)
        return super()._inject()

    def _create_layer(self, name: str, target: nn.Module) -> nn.Module:
        generator = self.model.image_encoder.sam_adapter_generator
        if name == "image_encoder.patch_embed":
            return PromptSource(target, generator)
        return PromptedBlock(target, generator, int(name.rsplit(".", 1)[1]))

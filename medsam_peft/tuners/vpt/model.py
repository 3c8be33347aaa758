from __future__ import annotations

from typing import ClassVar

import torch.nn as nn

from medsam_peft.tuners.base import TunedSam
from medsam_peft.tuners.vpt.config import VptConfig
from medsam_peft.tuners.vpt.layer import PromptedAttention


class VptModel(TunedSam):
    prefix: ClassVar[str] = "vpt_"
    identity_at_init: ClassVar[bool] = False
    config: VptConfig

    def _create_layer(self, name: str, target: nn.Module) -> nn.Module:
        block = self.model.get_submodule(name.rpartition(".")[0])
        return PromptedAttention(target, block.norm1, self.config.num_tokens, self.config.init_weights)

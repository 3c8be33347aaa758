from __future__ import annotations

from typing import ClassVar

import torch.nn as nn

from medsam_peft.tuners.adapter.config import AdapterConfig
from medsam_peft.tuners.adapter.layer import BottleneckAdapter
from medsam_peft.tuners.base import TunedSam


class AdapterModel(TunedSam):
    prefix: ClassVar[str] = "adapter_"
    config: AdapterConfig

    def _create_layer(self, name: str, target: nn.Module) -> nn.Module:
        return BottleneckAdapter(target, self.config.bottleneck, self.config.activation, self.config.init_weights)

from __future__ import annotations

from typing import ClassVar

import torch.nn as nn

from medsam_peft.tuners.base import TunedSam
from medsam_peft.tuners.ssf.config import SsfConfig
from medsam_peft.tuners.ssf.layer import ScaleShiftLayer


class SsfModel(TunedSam):
    prefix: ClassVar[str] = "ssf_"
    config: SsfConfig

    def _create_layer(self, name: str, target: nn.Module) -> nn.Module:
        return ScaleShiftLayer(target, self.config.init_weights)

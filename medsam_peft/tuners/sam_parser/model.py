from __future__ import annotations

from typing import ClassVar

import torch.nn as nn

from medsam_peft.tuners.base import TunedSam
from medsam_peft.tuners.sam_parser.config import SamParserConfig
from medsam_peft.tuners.sam_parser.layer import SvdCoefficientLayer


class SamParserModel(TunedSam):
    prefix: ClassVar[str] = "sam_parser_"
    config: SamParserConfig

    def _create_layer(self, name: str, target: nn.Module) -> nn.Module:
        return SvdCoefficientLayer(target, self.config.spectral_shift, self.config.init_weights)

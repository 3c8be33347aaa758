from __future__ import annotations

import re
from typing import ClassVar

from medsam_peft.errors import ConfigError
from medsam_peft.tuners.base import TunedSam
from medsam_peft.tuners.bitfit.config import BitFitConfig


class BitFitModel(TunedSam):
    """Marks the selected biases trainable; nothing to merge (the trained biases are the model's own)."""

    prefix: ClassVar[str] = ""
    config: BitFitConfig

    def _mark_trainable(self) -> None:
        super()._mark_trainable()
        found = 0
        for name, param in self.model.named_parameters():
            if self.is_bias_parameter(name):
                param.requires_grad_(True)
                found += 1
        if not found:
            raise ConfigError(f"bias_modules={self.config.bias_modules!r} matched no bias of the {self.model.backbone} "
                              "model")

    def is_bias_parameter(self, name: str) -> bool:
        module_name, _, leaf = name.rpartition(".")
        return leaf == "bias" and re.fullmatch(self.config.bias_modules, module_name) is not None

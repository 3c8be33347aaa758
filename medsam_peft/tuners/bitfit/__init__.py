"""BitFit (Ben Zaken et al., 2021, arXiv 2106.10199): train the encoder's bias terms and the mask decoder.

On ViT-H: 452,352 encoder biases (every Linear, LayerNorm and convolution bias: 14,080 per block, 1,280 in the patch
embedding, 512 in the neck's LayerNorms) + 3,505,536 decoder = 3,957,888, the Conv-LoRA paper's "3.96M". Nothing to
merge: the trained biases are the model's own.
"""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

from medsam_peft.tuners.base import TunedSam, TunerConfig, _compile
from medsam_peft.tuners.registry import register_tuner


@dataclasses.dataclass
class BitFitConfig(TunerConfig):
    """Args:
        bias_modules: regular expression; biases of modules whose qualified name fully matches it train.
    """

    bias_modules: str = r"image_encoder(\..+)?"

    tuner_type: ClassVar[str] = "bitfit"

    def validate(self) -> None:
        super().validate()
        _compile(self.bias_modules, "bias_modules")
        if self.target_modules is not None:
            raise ValueError("bitfit adapts no layer; choose the biases with bias_modules instead of target_modules")


class BitFitModel(TunedSam):
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
            raise ValueError(f"bias_modules={self.config.bias_modules!r} matched no bias of the {self.model.backbone} model")

    def is_bias_parameter(self, name: str) -> bool:
        module_name, _, leaf = name.rpartition(".")
        return leaf == "bias" and re.fullmatch(self.config.bias_modules, module_name) is not None


register_tuner("bitfit", BitFitConfig, BitFitModel)

__all__ = ["BitFitConfig", "BitFitModel"]

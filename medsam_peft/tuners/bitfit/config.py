from __future__ import annotations

import dataclasses
from typing import ClassVar

from medsam_peft.errors import ConfigError
from medsam_peft.tuners.base import TunerConfig, compile_pattern


@dataclasses.dataclass
class BitFitConfig(TunerConfig):
    """BitFit (Ben Zaken et al., 2021, arXiv 2106.10199): train the encoder's bias terms and the mask decoder.

    On ViT-H: 452,352 encoder biases (every Linear, LayerNorm and convolution bias: 14,080 per block, 1,280 in the
    patch embedding, 512 in the neck's LayerNorms) + 3,505,536 decoder = 3,957,888, the Conv-LoRA paper's "3.96M".

    Args:
        bias_modules: regular expression; biases of modules whose qualified name fully matches it train.
    """

    bias_modules: str = r"image_encoder(\..+)?"

    tuner_type: ClassVar[str] = "bitfit"
    default_target_modules: ClassVar[str | None] = None  # adapts no layer: it trains the model's own biases

    def validate(self) -> None:
        super().validate()
        compile_pattern(self.bias_modules, "bias_modules")
        if self.target_modules is not None:
            raise ConfigError("bitfit adapts no layer; choose the biases with bias_modules instead of target_modules")

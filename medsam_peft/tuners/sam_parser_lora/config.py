from __future__ import annotations

import dataclasses
from typing import ClassVar

from medsam_peft.tuners.base import compile_pattern
from medsam_peft.tuners.sam_parser.config import SamParserConfig


@dataclasses.dataclass
class SamParserLoraConfig(SamParserConfig):
    """The SAM-PARSER paper's suggested fix for its failure case (radar images, whose parameter space the pretrained
    bases cannot span): keep SAM-PARSER's trainable singular values and add LoRA to expand the bases.

    SAM-PARSER's options apply to the decomposed layers (``svd_target_modules``); LoRA adds rank-``r`` updates to
    ``lora_target_modules`` (default every block's fused qkv). ``r=4``, ``alpha=4`` (scaling 1, SAMed's LoRA) is the
    paper's LoRA baseline: 144K on ViT-B; with the neck's 512 coefficients and the decoder: 4,206,308. Mergeable.

    Args:
        r, alpha, lora_dropout: LoRA's rank, scaling numerator and input dropout.
        lora_target_modules: regular expression of the Linear layers that get LoRA.
    """

    r: int = 4
    alpha: float = 4.0
    lora_dropout: float = 0.0
    lora_target_modules: str = r"image_encoder\..*attn\.qkv"
    decompose_linear: bool = False
    spectral_shift: bool = False
    frozen_modules: tuple[str, ...] = ()

    reference_mask_tokens: ClassVar[int | None] = None  # SAM's four, as SAM-PARSER
    tuner_type: ClassVar[str] = "sam_parser_lora"
    default_target_modules: ClassVar[str | None] = r"image_encoder\.neck\.(0|2)"  # the SVD part, as SAM-PARSER's

    def validate(self) -> None:
        super().validate()
        compile_pattern(self.lora_target_modules, "lora_target_modules")
        self.require_positive_ints("r")
        self.require_fractions("lora_dropout")

    @property
    def effective_target_modules(self) -> str | None:
        return f"({self.svd_target_modules})|({self.lora_target_modules})"

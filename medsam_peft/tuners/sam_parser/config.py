from __future__ import annotations

import dataclasses
from typing import ClassVar

from medsam_peft.tuners.base import TunerConfig

_ENCODER_LINEARS = r"image_encoder\..*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(lin1|lin2|fc1|fc2))"


@dataclasses.dataclass
class SamParserConfig(TunerConfig):
    """SAM-PARSER (Peng et al., AAAI 2024, arXiv 2308.14604): factor pretrained weights as U diag(s) V^T with frozen
    bases and train only the singular values (coefficients), plus the full mask decoder.

    The default decomposes the two neck convolutions of the image encoder, weights reshaped to
    C_out x (C_in k k): 256 + 256 = 512 coefficients on ViT-B (the paper's "0.5K"; the released code trains the whole
    neck, 919,040 parameters, through an operator-precedence slip that is not reproduced). Mergeable.

    Args:
        decompose_linear: also decompose every encoder block's Linear layers (qkv, proj, MLP): the paper's variant.
        spectral_shift: train a shift d with W = U diag(relu(s0 + d)) V^T (SVDiff style), keeping values >= 0.
    """

    decompose_linear: bool = False
    spectral_shift: bool = False
    frozen_modules: tuple[str, ...] = ()

    reference_mask_tokens: ClassVar[int | None] = None  # SAM's four: the paper's 3963.2K decoder
    tuner_type: ClassVar[str] = "sam_parser"
    default_target_modules: ClassVar[str | None] = r"image_encoder\.neck\.(0|2)"

    @property
    def svd_target_modules(self) -> str:
        """The layers factored into bases and trainable singular values."""
        if self.target_modules is not None:
            return self.target_modules
        if self.decompose_linear:
            return f"({self.default_target_modules})|({_ENCODER_LINEARS})"
        return self.default_target_modules

    @property
    def effective_target_modules(self) -> str | None:
        return self.svd_target_modules

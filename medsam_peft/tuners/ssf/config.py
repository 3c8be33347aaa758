from __future__ import annotations

import dataclasses
from typing import ClassVar

from medsam_peft.tuners.base import TunerConfig


@dataclasses.dataclass
class SsfConfig(TunerConfig):
    """SSF (Lian et al., NeurIPS 2022, arXiv 2210.08823): ``y * gamma + beta`` per output channel after the patch
    embedding, every LayerNorm, Linear layer of the encoder blocks and the neck's LayerNorms, plus the mask decoder.

    On ViT-H: 32 x 28,160 + 2,560 + 1,024 = 904,704 scale/shift parameters, with the decoder 4,410,240 (the Conv-LoRA
    paper's "4.42M", 0.2% off; the paper does not list its insertion points). The neck convolutions have no bias, so
    a shift after them could not be merged; the LayerNorms that follow them carry it instead. Mergeable:
    ``W' = gamma W``, ``b' = gamma b + beta``.
    """

    tuner_type: ClassVar[str] = "ssf"
    default_target_modules: ClassVar[str | None] = (
        r"image_encoder\.(patch_embed\.proj|neck\.(1|3)"
        r"|.*blocks\.\d+\.(norm1|norm2|attn\.(qkv|proj|norm)|mlp\.(lin1|lin2|fc1|fc2|norm)))"
    )

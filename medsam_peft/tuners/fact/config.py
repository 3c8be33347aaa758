from __future__ import annotations

import dataclasses
from typing import ClassVar

from medsam_peft.tuners.base import TunerConfig


@dataclasses.dataclass
class FactConfig(TunerConfig):
    """FacT-TT (Jie & Deng, AAAI 2023, arXiv 2212.03145), the SAM-PARSER paper's baseline, plus the full decoder.

    The updates of all targeted C x C weight blocks form one tensor, factored as ``dW_j = s * U T_j V``: ``U``
    (C x r) and ``V`` (r x C) are shared by every layer, each block ``j`` has its own r x r core ``T_j``. A fused
    ``qkv`` layer holds three blocks (q, k, v), a C -> kC layer k blocks. ``V`` starts at zero (FacT's init), so the
    model starts as the pretrained one. Mergeable.

    Defaults follow the SAM-PARSER paper's setting: the whole mask decoder trains (4,058,340 on ViT-B, its
    "3963.2K" baseline) and FacT targets the attention (q, k, v, proj) with r = 8: 2 x 768 x 8 + 48 x 64 = 15,360,
    4,073,700 in all = 3978.2K against the paper's "3977.5 (14.3)" (0.02%).

    Args:
        r: rank of the shared factors.
        scale: ``s``, FacT's scaling hyper-parameter.
        dropout: dropout on ``x U`` (FacT's 0.1).
    """

    r: int = 8
    scale: float = 1.0
    dropout: float = 0.1
    frozen_modules: tuple[str, ...] = ()

    reference_mask_tokens: ClassVar[int | None] = None  # SAM's four, the SAM-PARSER paper's setting
    tuner_type: ClassVar[str] = "fact"
    requires_vit_encoder: ClassVar[bool] = True
    default_target_modules: ClassVar[str | None] = r"image_encoder\.blocks\.\d+\.attn\.(qkv|proj)"

    def validate(self) -> None:
        super().validate()
        self.require_positive_ints("r")
        self.require_fractions("dropout")

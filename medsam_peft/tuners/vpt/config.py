from __future__ import annotations

import dataclasses
from typing import ClassVar

from medsam_peft.tuners.base import TunerConfig


@dataclasses.dataclass
class VptConfig(TunerConfig):
    """VPT-Deep (Jia et al., ECCV 2022, arXiv 2203.12119) adapted to SAM's windowed ViT, plus the mask decoder.

    Each block gets ``num_tokens`` new prompt tokens, replaced at every block (deep VPT discards a block's prompt
    outputs), so only their keys and values matter: image tokens attend to the ``num_tokens`` prompts in addition to
    their usual neighbours. SAM keeps its token grid (B, H, W, C), which a prepended token would break, and its
    windowed blocks attend within 14x14 windows; so the prompts are **shared by every window** of a windowed block
    and by the whole grid in a global block, they pass through the block's ``norm1`` and ``qkv`` like any token, and
    they get **no relative-position bias** (they have no position). The prompts act from the first step, so the
    tuned model is *not* the pretrained one at initialisation (unlike LoRA or adapters).

    On ViT-H: 12 tokens x 1280 x 32 blocks = 491,520, with the decoder 3,997,056: the Conv-LoRA paper's "4.00M".

    Args:
        num_tokens: prompt tokens per block.
    """

    num_tokens: int = 12

    tuner_type: ClassVar[str] = "vpt"
    default_target_modules: ClassVar[str | None] = r"image_encoder\.blocks\.\d+\.attn"
    requires_vit_encoder: ClassVar[bool] = True

    def validate(self) -> None:
        super().validate()
        self.require_positive_ints("num_tokens")

from __future__ import annotations

import dataclasses
from typing import ClassVar

from medsam_peft.tuners.base import TunerConfig


@dataclasses.dataclass
class SamAdapterConfig(TunerConfig):
    """SAM-Adapter (Chen et al., ICCVW 2023, arXiv 2304.09148; explicit visual prompting, Liu et al. CVPR 2023).

    With ``d = C / scale_factor``: the patch embeddings are projected to ``d`` (``embedding``), the input's
    high-frequency part (FFT high-pass, the centre ``freq_nums`` of the spectrum removed) is patch-embedded to ``d``
    (``handcrafted``); per block ``i`` a ``Linear(d, d) + GELU`` (``tune_i``) of their sum goes through a shared
    ``Linear(d, C)`` and is added to the block's input. Trains those plus the mask decoder.

    ``scale_factor=16`` (d = 80) gives 475,040 on ViT-H, with the decoder 3,980,576: the Conv-LoRA paper's "3.98M"
    (the SAM-Adapter code's default 32 would give 3.69M). Deviation: the shared up-projection starts at zero, so the
    model starts as the pretrained one (the reference initialises it randomly). Not mergeable.

    Args:
        scale_factor: trunk width / prompt width.
        freq_nums: fraction of the spectrum's area (centred, low frequencies) removed by the high-pass.
    """

    scale_factor: int = 16
    freq_nums: float = 0.25

    tuner_type: ClassVar[str] = "sam_adapter"
    requires_vit_encoder: ClassVar[bool] = True
    default_target_modules: ClassVar[str | None] = r"image_encoder\.(patch_embed|blocks\.\d+)"

    def validate(self) -> None:
        super().validate()
        if self.target_modules is not None:
            raise ValueError("sam_adapter prompts every encoder block; target_modules cannot be changed")
        self.require_positive_ints("scale_factor")
        self.require_fractions("freq_nums")

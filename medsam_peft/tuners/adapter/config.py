from __future__ import annotations

import dataclasses
from typing import ClassVar

from medsam_peft.tuners.base import TunerConfig

ACTIVATIONS = ("gelu", "relu")


@dataclasses.dataclass
class AdapterConfig(TunerConfig):
    """Houlsby et al. (2019, arXiv 1902.00751): ``y + up(act(down(y)))`` on the output ``y`` of each block's attention
    and MLP, before the residual sum; ``up`` starts at zero so the model starts as the pretrained one. Not mergeable.

    The default bottleneck of 2 gives 2 x 32 x (2 x 1280 x 2 + 2 + 1280) = 409,728 adapter parameters on ViT-H, with
    the decoder 3,915,264: the Conv-LoRA paper's "3.92M" (its width is not stated; two adapters per block is
    Houlsby's placement, and 2 is the width that reproduces the count).

    Args:
        bottleneck: hidden width of each adapter.
        activation: ``"gelu"`` or ``"relu"`` between the two projections.
    """

    bottleneck: int = 2
    activation: str = "gelu"

    tuner_type: ClassVar[str] = "adapter"
    # SAM ViT blocks (attn, mlp) and LiteMedSAM's TinyViT attention stages (image_encoder.layers.i.blocks.j.attn/mlp).
    default_target_modules: ClassVar[str | None] = r"image_encoder\..*blocks\.\d+\.(attn|mlp)"

    def validate(self) -> None:
        super().validate()
        self.require_positive_ints("bottleneck")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")

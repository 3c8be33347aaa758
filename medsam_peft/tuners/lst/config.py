from __future__ import annotations

import dataclasses
from typing import ClassVar

from medsam_peft.tuners.base import TunerConfig


@dataclasses.dataclass
class LstConfig(TunerConfig):
    """LST (Sung et al., NeurIPS 2022, arXiv 2206.06522) for SAM's ViT, plus the mask decoder.

    A side network of SAM ``Block`` s of width ``d = round(C / reduction_factor)`` (same windows, global blocks and
    relative-position sizes as the trunk) runs beside the frozen encoder. Ladder ``i`` projects trunk block ``i``'s
    output to ``d`` and mixes it in with a learned gate: ``h_i = side_i(mu_i down_i(x_i) + (1 - mu_i) h_{i-1})``,
    ``mu_i = sigmoid(alpha_i / 0.1)``, ``alpha_i = 0`` at start (LST's gate). The side output is projected back to
    ``C`` and added to the trunk output before the neck; that projection starts at zero, so the model starts as the
    pretrained one (LST feeds its head from the side network only; adding to the frozen features keeps SAM's neck and
    decoder usable from step one). Gradients never enter the trunk, which is LST's memory saving. Side weights are
    randomly initialised (LST's pruned-backbone initialisation needs structured pruning of SAM; not done).

    The Conv-LoRA paper gives only the count, 11.49M on ViT-H; the width is not stated. ``reduction_factor=12.8``
    (d = 100, 10 heads) gives 8,135,391 side parameters and 11,640,927 in all (+1.3%); d = 96 would be -2.8%.

    Args:
        reduction_factor: trunk width / side width.
        side_dim: side width; overrides ``reduction_factor``.
        side_heads: attention heads of the side blocks (must divide the side width).
        gate_temperature: ``T`` in ``sigmoid(alpha / T)``.
    """

    reduction_factor: float = 12.8
    side_dim: int | None = None
    side_heads: int = 10
    gate_temperature: float = 0.1

    tuner_type: ClassVar[str] = "lst"
    requires_vit_encoder: ClassVar[bool] = True
    default_target_modules: ClassVar[str | None] = r"image_encoder\.(blocks\.\d+|neck)"

    def validate(self) -> None:
        super().validate()
        if self.target_modules is not None:
            raise ValueError("lst taps every encoder block and the neck; target_modules cannot be changed")
        if float(self.reduction_factor) <= 0 or int(self.side_heads) <= 0 or float(self.gate_temperature) <= 0:
            raise ValueError("reduction_factor, side_heads and gate_temperature must be positive")
        if self.side_dim is not None:
            self.require_positive_ints("side_dim")

    def width(self, trunk_dim: int) -> int:
        dim = int(self.side_dim) if self.side_dim is not None else round(trunk_dim / float(self.reduction_factor))
        if dim % int(self.side_heads):
            raise ValueError(f"side width {dim} is not divisible by side_heads={self.side_heads}; set side_dim or side_heads")
        return dim

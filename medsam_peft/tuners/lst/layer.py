from __future__ import annotations

import torch
import torch.nn as nn
from segment_anything.modeling.image_encoder import Block, ImageEncoderViT

from medsam_peft.tuners.base import BaseTunerLayer


def _grid_size(block: Block) -> tuple[int, int]:
    """The (H, W) that block's attention sees: its window, or the whole token grid in a global block."""
    if block.window_size > 0:
        return block.window_size, block.window_size
    attn = block.attn
    if getattr(attn, "use_rel_pos", False):
        return (attn.rel_pos_h.shape[0] + 1) // 2, (attn.rel_pos_w.shape[0] + 1) // 2
    raise ValueError("LST side blocks copy the trunk's relative-position sizes; this encoder has none")


class SideNetwork(nn.Module):
    """Ladders (down projections + gates), side blocks and the up projection; state of one forward in ``_hidden``."""

    def __init__(self, encoder: ImageEncoderViT, width: int, heads: int, temperature: float, init_weights: bool) -> None:
        super().__init__()
        trunk = encoder.blocks
        dim = trunk[0].attn.proj.in_features
        weight = trunk[0].attn.proj.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.temperature = float(temperature)
        self.lst_down = nn.ModuleList(nn.Linear(dim, width, **factory) for _ in trunk)
        self.lst_gate = nn.Parameter(torch.zeros(len(trunk) - 1, **factory))  # ladder 0 has nothing to mix with
        self.lst_blocks = nn.ModuleList(
            Block(width, heads, norm_layer=lambda c: nn.LayerNorm(c, eps=1e-6), use_rel_pos=True,
                  window_size=b.window_size, input_size=_grid_size(b)).to(**factory)
            for b in trunk
        )
        self.lst_up = nn.Linear(width, dim, **factory)
        if init_weights:
            nn.init.zeros_(self.lst_up.weight)
            nn.init.zeros_(self.lst_up.bias)
        else:
            nn.init.normal_(self.lst_gate, 0.0, 0.1)
            nn.init.normal_(self.lst_up.weight, 0.0, 0.02)
        self._hidden: torch.Tensor | None = None

    def ladder(self, index: int, trunk_out: torch.Tensor) -> None:
        """Feed trunk block ``index``'s output (B, H, W, C) into side block ``index``."""
        tapped = self.lst_down[index](trunk_out)
        if index == 0 or self._hidden is None:
            mixed = tapped
        else:
            mu = torch.sigmoid(self.lst_gate[index - 1] / self.temperature)
            mixed = mu * tapped + (1 - mu) * self._hidden
        self._hidden = self.lst_blocks[index](mixed)

    def fuse(self, trunk_out: torch.Tensor) -> torch.Tensor:
        """Trunk output (B, C, H, W) plus the projected side output; clears the per-forward state."""
        if self._hidden is None:
            raise RuntimeError("the LST side network ran no ladder before the neck")
        side = self.lst_up(self._hidden).permute(0, 3, 1, 2)
        self._hidden = None
        return trunk_out + side.to(trunk_out.dtype)


class LadderTap(nn.Module, BaseTunerLayer):
    """A frozen trunk block that also feeds its output to the side network."""

    merge_unsupported_reason = "the side network is a separate non-linear path"

    def __init__(self, base_layer: Block, side: SideNetwork, index: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self._side = (side,)  # registered once, on the image encoder
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        self._side[0].ladder(self.index, out)
        return out


class SideFusion(nn.Module, BaseTunerLayer):
    """The frozen neck, applied to the trunk output plus the side network's contribution."""

    merge_unsupported_reason = "the side network is a separate non-linear path"

    def __init__(self, base_layer: nn.Module, side: SideNetwork) -> None:
        super().__init__()
        self.base_layer = base_layer
        self._side = (side,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(self._side[0].fuse(x))

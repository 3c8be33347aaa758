from __future__ import annotations

import math

import torch
import torch.nn as nn
from segment_anything.modeling.image_encoder import Attention, add_decomposed_rel_pos

from medsam_peft.tuners.base import BaseTunerLayer


class PromptedAttention(nn.Module, BaseTunerLayer):
    """SAM's ``Attention`` whose queries also attend to ``num_tokens`` learned prompt tokens.

    The image-token part reproduces ``segment_anything``'s attention exactly (same q/k/v, scale and decomposed
    relative-position bias); the prompt keys/values are appended to the softmax without a position bias.
    """

    merge_unsupported_reason = "prompt tokens change the attention's softmax, not a weight"

    def __init__(self, base_layer: Attention, norm: nn.Module, num_tokens: int, init_weights: bool = True) -> None:
        super().__init__()
        if not isinstance(base_layer, Attention):
            raise TypeError(f"VPT wraps segment_anything Attention modules, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self._norm = (norm,)  # the block's norm1, applied to prompts as to every token; not registered twice
        dim = base_layer.proj.in_features
        weight = base_layer.proj.weight
        self.vpt_prompt = nn.Parameter(torch.empty(int(num_tokens), dim, device=weight.device, dtype=weight.dtype))
        # VPT's initialisation: Xavier-uniform over a 16x16x3 patch projection (the prompts live in token space).
        bound = math.sqrt(6.0 / float(3 * 16 * 16 + dim))
        nn.init.uniform_(self.vpt_prompt, -bound, bound)
        del init_weights  # prompts have no identity initialisation (documented in VptConfig)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.base_layer
        batch, height, width, _ = x.shape
        heads, tokens = attn.num_heads, height * width
        qkv = attn.qkv(x).reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, batch * heads, tokens, -1).unbind(0)
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        if attn.use_rel_pos:
            scores = add_decomposed_rel_pos(scores, q, attn.rel_pos_h, attn.rel_pos_w, (height, width), (height, width))

        prompts = self._norm[0](self.vpt_prompt.to(x.dtype))
        num_prompts = prompts.shape[0]
        prompt_kv = attn.qkv(prompts).reshape(num_prompts, 3, heads, -1)[:, 1:].permute(1, 2, 0, 3)  # (2, h, P, d)
        prompt_k, prompt_v = (t.unsqueeze(0).expand(batch, -1, -1, -1).reshape(batch * heads, num_prompts, -1)
                              for t in prompt_kv.unbind(0))
        prompt_scores = (q * attn.scale) @ prompt_k.transpose(-2, -1)

        probs = torch.cat([scores, prompt_scores.to(scores.dtype)], dim=-1).softmax(dim=-1)
        out = probs[..., :tokens] @ v + probs[..., tokens:].to(prompt_v.dtype) @ prompt_v
        out = out.view(batch, heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
        return attn.proj(out)

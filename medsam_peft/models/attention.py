"""SAM's ViT attention without materialising what it does not need.

The official ``Attention`` materialises ``softmax(q k^T + bias) v`` step by step and autograd keeps the whole
(B*heads, HW, HW) probability matrix of every block for backward: at 1024² that is 12 x 4096 x 4096 values per global
block, most of a ViT-B training step's memory. Two replacements, swapped in per module so that tuners wrapping
``qkv``/``proj`` are untouched:

* "sdpa": ``torch.nn.functional.scaled_dot_product_attention`` with the decomposed relative-position bias as the
  additive mask (fused; inference only by default because a bias that needs a gradient sends it down its slow path);
* "chunked": :class:`RelPosAttentionFunction`, the same arithmetic as the official code over blocks of queries, keeping
  only q, k, v and the bias factors for backward and recomputing each block's probabilities there (the bias gradient
  is a row/column sum of dS, so the bias never needs its own (HW, HW) tensor either).

Both are tested against the official module in values and gradients.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsam_peft.errors import ConfigError


def _attention_class() -> type[nn.Module]:
    from segment_anything.modeling.image_encoder import Attention

    return Attention


def decomposed_rel_pos_factors(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of ``add_decomposed_rel_pos``'s bias, as the official einsums compute them:
    rel_h (B*heads, H*W, H) and rel_w (B*heads, H*W, W); the bias of query i and key (kh, kw) is
    ``rel_h[:, i, kh] + rel_w[:, i, kw]``. ``q`` is unscaled, (B*heads, H*W, C), as in the official function."""
    from segment_anything.modeling.image_encoder import get_rel_pos

    h, w = size
    r_q = q.reshape(q.shape[0], h, w, q.shape[-1])
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, rel_pos_h)).reshape(q.shape[0], h * w, h)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, rel_pos_w)).reshape(q.shape[0], h * w, w)
    return rel_h, rel_w


def decomposed_rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """The additive bias ``add_decomposed_rel_pos`` adds to the attention logits: (B*heads, H*W, H*W)."""
    rel_h, rel_w = decomposed_rel_pos_factors(q, rel_pos_h, rel_pos_w, size)
    return (rel_h[:, :, :, None] + rel_w[:, :, None, :]).reshape(q.shape[0], q.shape[1], q.shape[1])


def _heads(self: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of the official ``Attention`` for (B, H, W, C) tokens, each (B*heads, H*W, C/heads), as it lays them."""
    b, h, w, _ = x.shape
    qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    return qkv.reshape(3, b * self.num_heads, h * w, -1).unbind(0)


def _project(self: nn.Module, out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """(B*heads, H*W, C/heads) attention output -> the module's (B, H, W, C) output."""
    b, h, w, _ = shape
    return self.proj(out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1))


def _sdpa_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    b, h, w, _ = x.shape
    flat_q, k, v = _heads(self, x)
    bias = None
    if self.use_rel_pos:
        bias = decomposed_rel_pos_bias(flat_q, self.rel_pos_h, self.rel_pos_w, (h, w)).to(flat_q.dtype)
        bias = bias.view(b, self.num_heads, h * w, h * w)
    # SDPA's documented (B, heads, L, C) layout, the one the README's timings were taken with.
    q, k, v = (t.view(b, self.num_heads, h * w, -1) for t in (flat_q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    return _project(self, out, x.shape)


# Elements of one block of attention scores (B*heads x queries x keys): 2**24 bf16 values are 32 MiB, small enough to
# stay out of the way and large enough that the matmuls run at full speed (measured at 1024², ViT-B).
CHUNK_ELEMENTS = 2**24
# "auto" chunks the attention of blocks whose attention spans at least this many tokens: the global blocks from
# 512² inputs on (32 x 32 tokens). Smaller (windowed) attention matrices cost little memory, and recomputing them
# in backward costs more than it saves.
CHUNKED_MIN_TOKENS = 1024


class RelPosAttentionFunction(torch.autograd.Function):
    """``softmax(scale * q k^T + rel_h[..., :, None] + rel_w[..., None, :]) v`` over blocks of queries.

    q, k, v: (B*heads, H*W, C); rel_h: (B*heads, H*W, H) and rel_w: (B*heads, H*W, W), the decomposed bias factors
    of ``add_decomposed_rel_pos``. Forward keeps no probabilities; backward recomputes them one block at a time and
    returns the gradients of all five inputs.
    """

    @staticmethod
    def _probabilities(scaled_q: torch.Tensor, k_t: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor
                       ) -> torch.Tensor:
        rows = scaled_q.shape[:2]
        scores = torch.bmm(scaled_q, k_t)
        scores.view(*rows, rel_h.shape[-1], rel_w.shape[-1]).add_(rel_h[:, :, :, None]).add_(rel_w[:, :, None, :])
        if scores.dtype == torch.float16:  # fp16 softmax overflows; bf16 and fp32 run it natively
            return torch.softmax(scores, -1, dtype=torch.float32).to(scores.dtype)
        return torch.softmax(scores, -1)

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor,
                scale: float, chunk: int) -> torch.Tensor:
        with torch.autocast(q.device.type, enabled=False):  # compute in q's dtype whatever the caller's autocast
            return RelPosAttentionFunction._forward(ctx, q, k, v, rel_h, rel_w, scale, chunk)

    @staticmethod
    def _forward(ctx, q, k, v, rel_h, rel_w, scale, chunk) -> torch.Tensor:
        scaled_q = q * scale
        k_t = k.transpose(1, 2)
        out = torch.empty_like(q)
        for start in range(0, q.shape[1], chunk):
            rows = slice(start, start + chunk)
            probs = RelPosAttentionFunction._probabilities(scaled_q[:, rows], k_t, rel_h[:, rows], rel_w[:, rows])
            torch.bmm(probs, v, out=out[:, rows])
        ctx.save_for_backward(scaled_q, k, v, rel_h, rel_w)
        ctx.scale, ctx.chunk = scale, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        with torch.autocast(grad_out.device.type, enabled=False):
            return RelPosAttentionFunction._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out: torch.Tensor):
        scaled_q, k, v, rel_h, rel_w = ctx.saved_tensors
        grad_out = grad_out.to(v.dtype)
        k_t, v_t = k.transpose(1, 2), v.transpose(1, 2)
        grad_q, grad_rel_h, grad_rel_w = torch.empty_like(scaled_q), torch.empty_like(rel_h), torch.empty_like(rel_w)
        # k and v collect a sum over blocks: accumulate in at least fp32 whatever the compute dtype.
        accumulate = torch.promote_types(k.dtype, torch.float32)
        grad_k = torch.zeros(k.shape, dtype=accumulate, device=k.device)
        grad_v = torch.zeros(v.shape, dtype=accumulate, device=v.device)
        for start in range(0, scaled_q.shape[1], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            probs = RelPosAttentionFunction._probabilities(scaled_q[:, rows], k_t, rel_h[:, rows], rel_w[:, rows])
            grad_v += torch.bmm(probs.transpose(1, 2), grad_out[:, rows])
            grad_scores = torch._softmax_backward_data(torch.bmm(grad_out[:, rows], v_t), probs, -1, probs.dtype)
            per_key = grad_scores.view(*grad_scores.shape[:2], rel_h.shape[-1], rel_w.shape[-1])
            torch.sum(per_key, -1, out=grad_rel_h[:, rows])
            torch.sum(per_key, -2, out=grad_rel_w[:, rows])
            torch.bmm(grad_scores, k, out=grad_q[:, rows])
            grad_k += torch.bmm(grad_scores.transpose(1, 2), scaled_q[:, rows])
        return grad_q.mul_(ctx.scale), grad_k.to(k.dtype), grad_v.to(v.dtype), grad_rel_h, grad_rel_w, None, None


def chunked_rel_pos_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_h: torch.Tensor,
                              rel_pos_w: torch.Tensor, size: tuple[int, int], scale: float,
                              chunk_elements: int | None = None) -> torch.Tensor:
    """The official attention core (scores, relative-position bias, softmax, values) for q, k, v of shape
    (B*heads, H*W, C), through :class:`RelPosAttentionFunction` with blocks of about ``chunk_elements`` scores
    (default ``CHUNK_ELEMENTS``)."""
    rel_h, rel_w = decomposed_rel_pos_factors(q, rel_pos_h, rel_pos_w, size)
    chunk_elements = CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
    chunk = max(1, min(q.shape[1], chunk_elements // (q.shape[0] * k.shape[1])))
    return RelPosAttentionFunction.apply(q, k.to(q.dtype), v.to(q.dtype), rel_h.to(q.dtype), rel_w.to(q.dtype),
                                         scale, chunk)


def _chunked_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not self.use_rel_pos:
        return type(self).forward(self, x)
    q, k, v = _heads(self, x)
    out = chunked_rel_pos_attention(q, k, v, self.rel_pos_h, self.rel_pos_w, x.shape[1:3], self.scale)
    return _project(self, out, x.shape)


def _auto_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # Measured on CPU at 1024², ViT-B, bf16. Training: the official global attention keeps 4 x 12 x 4096² probabilities
    # for backward; chunked, a Conv-LoRA step went from 18.1 s / 6.27 GiB to 12.9 s / 4.19 GiB, and SDPA was 1.8x
    # slower (a bias that needs a gradient sends it down its unfused path). Inference: chunked 6.25 s / 1.68 GiB,
    # SDPA 7.71 s / 2.29 GiB, official 8.35 s / 2.66 GiB (glibc's allocator; all within 10% with cpu_allocator
    # "reuse"). Windowed attention (14 x 14 tokens) is small: SDPA without autograd, official with it, where
    # recomputing it cost 0.14 s per block against 0.08 s.
    if x.shape[1] * x.shape[2] >= CHUNKED_MIN_TOKENS:
        return _chunked_forward(self, x)
    if not torch.is_grad_enabled():
        return _sdpa_forward(self, x)
    return type(self).forward(self, x)


ATTENTION_BACKENDS = ("eager", "sdpa", "chunked", "auto")


def set_attention_backend(encoder: nn.Module, backend: str) -> int:
    """Route every official ``Attention`` module in ``encoder`` through ``backend``: "eager" (the official code),
    "sdpa", "chunked" (:class:`RelPosAttentionFunction`) or "auto" (chunked for attention over ``CHUNKED_MIN_TOKENS`` tokens
    or more; below, SDPA when no gradient is recorded, the official code otherwise); returns how many modules
    were switched. Subclasses (VPT's prompted attention) keep their own forward. Only the bound ``forward`` changes:
    parameters, names and adapters stay as they are."""
    if backend not in ATTENTION_BACKENDS:
        raise ConfigError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    attention = _attention_class()
    switched = 0
    for module in encoder.modules():
        if type(module) is not attention:
            continue
        if backend == "sdpa":
            module.forward = _sdpa_forward.__get__(module)
        elif backend == "chunked":
            module.forward = _chunked_forward.__get__(module)
        elif backend == "auto":
            module.forward = _auto_forward.__get__(module)
        else:
            module.__dict__.pop("forward", None)
        switched += 1
    return switched


__all__ = ["ATTENTION_BACKENDS", "CHUNKED_MIN_TOKENS", "RelPosAttentionFunction", "chunked_rel_pos_attention",
           "decomposed_rel_pos_bias", "decomposed_rel_pos_factors", "set_attention_backend"]

"""Method-specific behaviour of the baseline tuners, checked against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import add_decomposed_rel_pos, window_partition

from medsam_peft.models import build_sam
from medsam_peft.tuners import get_tuned_model
from medsam_peft.tuners.sam_adapter import high_pass


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build_sam("vit_tiny")


def _naive_prompted_attention(attn, norm, prompts, x):
    """Prepend the prompts to every window's token sequence and run plain multi-head attention, one head at a time."""
    batch, h, w, dim = x.shape
    heads, hd = attn.num_heads, dim // attn.num_heads
    tokens = x.reshape(batch, h * w, dim)
    p = norm(prompts)
    outs = []
    for b in range(batch):
        seq = torch.cat([p, tokens[b]], dim=0)  # (P + HW, C)
        q, k, v = attn.qkv(seq).reshape(-1, 3, heads, hd).unbind(1)
        per_head = []
        for i in range(heads):
            scores = (q[:, i] * hd**-0.5) @ k[:, i].T  # (P + HW, P + HW)
            image_scores = scores[len(p):, len(p):].unsqueeze(0)
            image_bias = add_decomposed_rel_pos(image_scores, q[len(p):, i].unsqueeze(0), attn.rel_pos_h,
                                                attn.rel_pos_w, (h, w), (h, w))[0] - image_scores[0]
            bias = torch.zeros_like(scores)
            bias[len(p):, len(p):] = image_bias  # prompts have no position, hence no bias
            per_head.append((scores + bias).softmax(-1)[len(p):] @ v[:, i])  # prompt outputs are discarded
        outs.append(torch.cat(per_head, dim=-1))
    return attn.proj(torch.stack(outs).reshape(batch, h, w, dim))


@pytest.mark.parametrize("block_index", [0, 1], ids=["windowed", "global"])
def test_vpt_attention_equals_prompts_prepended_to_each_window(block_index) -> None:
    tuned = get_tuned_model(_tiny(), "vpt", num_tokens=3).eval()
    block = tuned.model.image_encoder.blocks[block_index]
    layer = block.attn
    x = block.norm1(torch.randn(2, 8, 8, 32))
    if block.window_size:  # windows of the 8x8 grid: every window sees the same prompts
        x, _ = window_partition(x, block.window_size)
        assert x.shape[0] == 2 * 4
    with torch.no_grad():
        got = layer(x)
        expected = _naive_prompted_attention(layer.base_layer, block.norm1, layer.vpt_prompt, x)
    assert torch.allclose(got, expected, atol=1e-5)


def test_fact_factors_are_shared_and_the_update_is_u_core_v() -> None:
    tuned = get_tuned_model(_tiny(), "fact", r=4, scale=3.0, dropout=0.0, init_weights=False).eval()
    layers = [layer for _, layer in tuned.tuner_layers()]
    factors = tuned.model.image_encoder.fact_factors
    assert all(layer._factors[0] is factors for layer in layers)
    names = [n for n, _ in tuned.model.named_parameters() if "fact_" in n]
    assert sum("fact_u" in n for n in names) == 1 and sum("fact_v" in n for n in names) == 1
    qkv = tuned.model.image_encoder.blocks[0].attn.qkv
    u, v = factors.fact_u.detach(), factors.fact_v.detach()
    x = torch.randn(5, 32)
    with torch.no_grad():
        expected = qkv.base_layer(x) + 3.0 * torch.cat([x @ u @ core @ v for core in qkv.fact_core], dim=-1)
        assert torch.allclose(qkv(x), expected, atol=1e-5)
        assert torch.allclose(F.linear(x, qkv.delta_weight()), expected - qkv.base_layer(x), atol=1e-5)


def test_lst_keeps_the_trunk_out_of_autograd() -> None:
    """LST's memory saving: no trunk activation is recorded for backward; gradients reach the side network."""
    tuned = get_tuned_model(_tiny(), "lst", side_dim=8, side_heads=2, init_weights=False).train()
    trunk_outputs = []
    for block in tuned.model.image_encoder.blocks:
        block.base_layer.register_forward_hook(lambda _m, _i, out: trunk_outputs.append(out))
    out = tuned(torch.rand(1, 3, 128, 128), boxes=torch.tensor([[10.0, 10.0, 90.0, 90.0]]))
    assert len(trunk_outputs) == 2 and not any(t.requires_grad for t in trunk_outputs)
    out.mean().backward()
    side = tuned.model.image_encoder.lst_side
    assert side.lst_gate.grad is not None and side.lst_gate.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in tuned.model.named_parameters() if n.startswith("image_encoder.blocks"))


def test_sam_adapter_high_pass_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((2, 3, 32, 32)).astype(np.float32)
    half = int((32 * 32 * 0.25) ** 0.5 // 2)  # 8: a 16x16 centred square of the shifted spectrum is removed
    spectrum = np.fft.fftshift(np.fft.fft2(image, norm="forward"), axes=(-2, -1))
    spectrum[..., 16 - half : 16 + half, 16 - half : 16 + half] = 0
    expected = np.abs(np.fft.ifft2(np.fft.ifftshift(spectrum, axes=(-2, -1)), norm="forward").real)
    got = high_pass(torch.from_numpy(image), 0.25).numpy()
    assert np.allclose(got, expected, atol=1e-5)
    assert float(high_pass(torch.full((1, 1, 32, 32), 0.7), 0.25).abs().max()) < 1e-6  # a flat image has no detail


def test_bitfit_trains_biases_only_in_the_encoder() -> None:
    tuned = get_tuned_model(_tiny(), "bitfit")
    encoder_trainable = [n for n, p in tuned.model.named_parameters() if p.requires_grad and n.startswith("image_enc")]
    encoder_biases = [n for n, _ in tuned.model.image_encoder.named_parameters() if n.endswith(".bias")]
    assert sorted(encoder_trainable) == sorted("image_encoder." + n for n in encoder_biases)


@pytest.mark.parametrize(
    "tuner, options, message",
    [
        ("sam_parser_lora", {"decompose_linear": True}, "targeted by both SAM-PARSER and LoRA"),
        ("lst", {"side_dim": 9, "side_heads": 2}, "side width 9 is not divisible by side_heads=2"),
        ("lst", {"target_modules": "image_encoder"}, "target_modules cannot be changed"),
        ("adapter", {"activation": "tanh"}, "activation must be one of"),
        ("vpt", {"num_tokens": 0}, "num_tokens must be a positive integer"),
        ("bitfit", {"bias_modules": r"image_encoder\.nothing"}, "matched no bias"),
        ("fact", {"target_modules": r"image_encoder\.blocks\.0\.mlp\.lin2"}, "FacT factorises Linear layers 32 -> k\\*32"),
        ("full", {"target_modules": "image_encoder"}, "remove target_modules"),
    ],
)
def test_bad_baseline_options_raise_clear_errors(tuner, options, message) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        get_tuned_model(_tiny(), tuner, **options)

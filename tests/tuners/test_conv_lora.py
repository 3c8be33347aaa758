"""Conv-LoRA specifics: routing granularity, gate determinism, load-balancing loss, sparse dispatch."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from medsam_peft.models import build_sam
from medsam_peft.tuners import ConvLoraConfig, get_tuned_model
from medsam_peft.tuners.conv_lora import ConvLoraLinear, NoisyTopOneGate, cv_squared


def _tuned(**options):
    torch.manual_seed(0)
    return get_tuned_model(build_sam("vit_tiny"), "conv_lora", **options)


def test_routing_is_per_window_in_windowed_blocks_and_per_image_in_global_blocks() -> None:
    # vit_tiny: 128 px / 16 = 8x8 tokens, window 4 -> 4 windows per image in block 0; block 1 is global.
    model = _tuned(init_weights=False).eval()
    with torch.no_grad():
        model(torch.rand(3, 3, 128, 128), boxes=torch.tensor([[0.0, 0, 60, 60]] * 3))
    layers = dict(model.tuner_layers())
    assert layers["image_encoder.blocks.0.attn.qkv"].last_expert_index.shape == (3 * 4,)
    assert layers["image_encoder.blocks.1.attn.qkv"].last_expert_index.shape == (3,)


def test_gate_is_deterministic_in_eval_and_noisy_in_training() -> None:
    gate = NoisyTopOneGate(dim=3, num_experts=8, init_weights=False)
    features = torch.randn(64, 3, 5, 5)
    gate.eval()
    first, second = gate(features)[0], gate(features)[0]
    assert torch.equal(first, second)
    assert torch.equal(first, (features.mean((2, 3)) @ gate.w_gate).argmax(1))
    gate.train()
    draws = torch.stack([gate(features)[0] for _ in range(5)])
    assert (draws != draws[0]).any()


def test_zero_initialised_gate_routes_randomly_in_training() -> None:
    gate = NoisyTopOneGate(dim=3, num_experts=8).train()
    index = gate(torch.randn(4000, 3, 2, 2))[0]
    counts = torch.bincount(index, minlength=8).float()
    # zero W_gate/W_noise: noise std = softplus(0) + 0.01 for every expert -> uniform choice
    assert counts.min() > 400 and counts.max() < 600


def test_aux_loss_matches_the_formula_on_a_hand_computed_case() -> None:
    gate = NoisyTopOneGate(dim=2, num_experts=4).eval()
    with torch.no_grad():
        gate.w_gate.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]))
    # pooled features (2, 0), (3, 0), (0, 5) -> experts 0, 0, 2
    features = torch.tensor([[2.0, 0.0], [3.0, 0.0], [0.0, 5.0]])[:, :, None, None].expand(-1, -1, 4, 4)
    index, importance, load = gate(features)
    assert index.tolist() == [0, 0, 2]
    assert importance.tolist() == [2.0, 0.0, 1.0, 0.0] and load.tolist() == [2.0, 0.0, 1.0, 0.0]
    # cv^2 of [2, 0, 1, 0]: mean 0.75, unbiased variance (1.25^2 + 0.75^2 + 0.25^2 + 0.75^2) / 3 = 11/12
    cv2 = (11 / 12) / 0.75**2
    assert math.isclose(float(cv_squared(importance.detach())), cv2, rel_tol=1e-6)
    layer = ConvLoraLinear(torch.nn.Linear(6, 18), r=2, alpha=4, num_experts=4).eval()
    layer.conv_lora_gate.load_state_dict(gate.state_dict())
    layer.route(features.contiguous())
    assert math.isclose(float(layer.aux_loss()), 0.01 * 2 * cv2, rel_tol=1e-6)


def test_training_load_is_the_probability_of_staying_in_the_top_one() -> None:
    torch.manual_seed(5)
    gate = NoisyTopOneGate(dim=3, num_experts=4, init_weights=False).train()
    features = torch.randn(6, 3, 2, 2)
    torch.manual_seed(7)
    _, _, load = gate(features)
    # independent recomputation with the same noise draw, SciPy's normal CDF and plain loops
    pooled = features.mean((2, 3)).double().numpy()
    clean = pooled @ gate.w_gate.detach().double().numpy()
    std = torch.nn.functional.softplus(torch.as_tensor(pooled @ gate.w_noise.detach().double().numpy())).numpy() + 1e-2
    torch.manual_seed(7)
    noisy = clean + torch.randn(clean.shape, dtype=torch.float32).double().numpy() * std
    expected = [0.0] * 4
    for n in range(6):
        first, second = sorted(noisy[n], reverse=True)[:2]
        for e in range(4):
            threshold = second if noisy[n, e] > second else first
            expected[e] += norm.cdf((clean[n, e] - threshold) / std[n, e])
    assert load.tolist() == pytest.approx(expected, rel=1e-4)
    assert load.requires_grad  # the load term trains W_gate and W_noise


def test_sparse_dispatch_equals_dense_reference() -> None:
    layer = ConvLoraLinear(torch.nn.Linear(8, 24), r=3, alpha=6, num_experts=5, init_weights=False).eval()
    grid = torch.randn(10, 3, 7, 7)
    out = layer.route(grid)
    index = layer.last_expert_index
    dense = torch.stack([expert(grid) for expert in layer.conv_lora_experts])  # every expert on every window
    reference = dense[index, torch.arange(10)]
    assert torch.allclose(out, reference, atol=1e-6)


def test_experts_scale_one_to_e_with_zero_bias() -> None:
    layer = ConvLoraLinear(torch.nn.Linear(8, 24), r=3, alpha=32)
    assert [e.scale for e in layer.conv_lora_experts] == list(range(1, 9))
    assert all(torch.equal(e.conv.bias, torch.zeros(3)) for e in layer.conv_lora_experts)
    assert layer.scaling == pytest.approx(32 / 3)


def test_aux_loss_is_summed_over_blocks() -> None:
    model = _tuned(init_weights=False).train()
    model(torch.rand(2, 3, 128, 128))
    per_layer = [layer.aux_loss() for _, layer in model.tuner_layers()]
    assert len(per_layer) == 2
    assert torch.isclose(model.aux_loss(), per_layer[0] + per_layer[1])
    # global block routes one window per image: importance one-hot per sample -> cv^2 > 0
    assert float(per_layer[1]) > 0


def test_three_dimensional_tokens_need_a_square_grid() -> None:
    layer = ConvLoraLinear(torch.nn.Linear(8, 24), r=2, alpha=4)
    assert layer(torch.randn(2, 49, 8)).shape == (2, 49, 24)
    with pytest.raises(ValueError, match="square token grid"):
        layer(torch.randn(2, 50, 8))


@pytest.mark.parametrize("bad, message", [({"r": 0}, "r must be a positive"), ({"num_experts": 1}, "num_experts"),
                                          ({"target_modules": "("}, "not a valid regular expression")])
def test_bad_options_raise_clear_errors(bad, message) -> None:
    with pytest.raises(ValueError, match=message):
        ConvLoraConfig(**bad)

"""SAM-PARSER specifics: exact SVD, 512 coefficients on ViT-B, SVDiff shift, merge into the base conv."""

from __future__ import annotations

import torch

from medsam_peft.models import build_sam
from medsam_peft.tuners import build_tuned_sam, get_tuned_model
from medsam_peft.tuners.sam_parser import SvdCoefficientLayer


def test_svd_reconstructs_the_pretrained_neck_of_real_lite_medsam(lite_medsam_state) -> None:
    model = build_sam("lite_medsam")
    model.load_state_dict(lite_medsam_state)
    tuned = get_tuned_model(model, "sam_parser")
    for name, layer in tuned.tuner_layers():
        weight = layer.base_layer.weight.reshape(layer.base_layer.weight.shape[0], -1)
        rebuilt = (layer.basis_u * layer.pretrained_s) @ layer.basis_vt
        assert float((rebuilt - weight).norm() / weight.norm()) < 1e-5, name
        assert layer.rank == min(weight.shape) == 256
        assert torch.equal(layer.sam_parser_s.detach(), layer.pretrained_s)


def test_vit_b_trains_exactly_512_coefficients_not_the_whole_neck() -> None:
    report = build_tuned_sam("vit_b", tuner="sam_parser", device="meta").parameter_report()
    assert report["trainable_by_group"] == {"adapter": 512, "mask_decoder": 4_058_340}


def test_coefficients_change_the_weight_as_u_diag_s_vt() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 4, 3, padding=1, bias=False)
    layer = SvdCoefficientLayer(conv)
    with torch.no_grad():
        layer.sam_parser_s.mul_(torch.tensor([2.0, 1.0, 0.5, 0.0]))
    x = torch.randn(2, 6, 5, 5)
    u, s, vt = torch.linalg.svd(conv.weight.detach().reshape(4, -1).double(), full_matrices=False)
    expected_w = (u * (s * torch.tensor([2.0, 1.0, 0.5, 0.0], dtype=torch.double))) @ vt
    expected = torch.nn.functional.conv2d(x, expected_w.float().reshape(4, 6, 3, 3), padding=1)
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_spectral_shift_keeps_singular_values_non_negative() -> None:
    layer = SvdCoefficientLayer(torch.nn.Linear(5, 3), spectral_shift=True)
    assert torch.equal(layer.sam_parser_s.detach(), torch.zeros(3))
    with torch.no_grad():
        layer.sam_parser_s.fill_(-1e3)
    assert torch.equal(layer.effective_singular_values(), torch.zeros(3))
    assert layer.delta_weight().shape == (3, 5)

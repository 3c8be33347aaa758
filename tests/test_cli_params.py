"""`medsam-peft params` reproduces the seeds' parameter counts exactly (meta device: no weights allocated)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medsam_peft.cli import main


@pytest.mark.parametrize(
    "backbone, tuner, trainable, groups",
    [
        ("vit_h", "conv_lora", 4_020_096, {"adapter": 514_560, "mask_decoder": 3_505_536}),  # paper 4.02M / 0.63%
        ("vit_h", "lora", 3_997_056, {"adapter": 491_520, "mask_decoder": 3_505_536}),  # paper 4.00M
        ("vit_h", "decoder_only", 3_505_536, {"mask_decoder": 3_505_536}),  # paper 3.51M
        ("vit_b", "sam_parser", 4_058_852, {"adapter": 512, "mask_decoder": 4_058_340}),  # paper 0.5K + 3963.2K
        ("vit_b", "conv_lora", 3_624_768, {"adapter": 119_232, "mask_decoder": 3_505_536}),
        ("vit_l", "conv_lora", 3_817_728, {"adapter": 312_192, "mask_decoder": 3_505_536}),
    ],
)
def test_params_json(backbone, tuner, trainable, groups, capsys) -> None:  # exact counts of the core tuners
    assert main(["params", "--backbone", backbone, "--tuner", tuner, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trainable"] == trainable
    assert report["trainable_by_group"] == groups
    assert report["ratio"] == pytest.approx(trainable / report["total"])


# Baselines: (backbone, tuner, the paper's count in M (Conv-LoRA table) or K = 1024 (SAM-PARSER table), exact count,
# independent formula for the adapter part). ViT-H: C = 1280, 32 blocks, 4 global; ViT-B: C = 768, 12 blocks.
H, HB, DEC, FULL_DEC = 1280, 32, 3_505_536, 4_058_340
BASELINES = [
    # BitFit: biases of norm1, qkv, proj, norm2, lin1, lin2 per block; patch embedding; the neck's two LayerNorms.
    ("vit_h", "bitfit", 3.96e6, HB * (H + 3 * H + H + H + 4 * H + H) + H + 2 * 256 + DEC),
    ("vit_h", "adapter", 3.92e6, 2 * HB * (2 * H * 2 + 2 + H) + DEC),
    ("vit_h", "vpt", 4.00e6, HB * 12 * H + DEC),
    # SSF: scale + shift after the same six operations, the patch embedding and the neck's LayerNorms.
    ("vit_h", "ssf", 4.42e6, HB * 2 * (H + 3 * H + H + H + 4 * H + H) + 2 * H + 2 * 2 * 256 + DEC),
    ("vit_h", "sam_adapter", 3.98e6, (H * 80 + 80) + (3 * 80 * 256 + 80) + HB * (80 * 80 + 80) + (80 * H + H) + DEC),
    # LST side width 100, 10 heads: per block ladder C*d+d, side block 12d^2+13d, rel-pos 2(2s-1)(d/10); 31 gates.
    ("vit_h", "lst", 11.49e6, HB * (H * 100 + 100 + 12 * 100**2 + 13 * 100) + 28 * 2 * 27 * 10 + 4 * 2 * 127 * 10
     + 31 + (100 * H + H) + DEC),
    ("vit_h", "full", 641.09e6, 641_090_608),
    ("vit_b", "fact", 3977.5 * 1024, 2 * 768 * 8 + 12 * 4 * 8 * 8 + FULL_DEC),
    ("vit_b", "lora", 4080.2 * 1024, 12 * 4 * (768 + 3 * 768) + FULL_DEC),  # SAM-PARSER's LoRA row: --rank 4 + full decoder
    ("vit_b", "adapter", 4314.7 * 1024, 2 * 12 * (2 * 768 * 9 + 9 + 768) + FULL_DEC),  # --option bottleneck=9
]
# The SAM-PARSER paper's baselines train SAM's whole decoder (its "3963.2K"): four mask tokens, IoU head included.
SAM_PARSER_SETTING = ["--mask-tokens", "null", "--option", "frozen_modules=[]"]


@pytest.mark.parametrize("backbone, tuner, paper, exact", BASELINES, ids=[f"{b}-{t}" for b, t, *_ in BASELINES])
def test_baseline_counts_match_the_papers_within_two_percent(backbone, tuner, paper, exact, capsys) -> None:
    args = ["params", "--backbone", backbone, "--tuner", tuner, "--json"]
    if (backbone, tuner) == ("vit_b", "lora"):
        args += ["--rank", "4", *SAM_PARSER_SETTING]
    if (backbone, tuner) == ("vit_b", "adapter"):
        args += ["--option", "bottleneck=9", *SAM_PARSER_SETTING]
    assert main(args) == 0
    trainable = json.loads(capsys.readouterr().out)["trainable"]
    assert trainable == exact
    assert abs(trainable / paper - 1) < 0.02, (trainable, paper)


def test_sam_parser_lora_adds_the_papers_lora_to_the_coefficients(capsys) -> None:
    main(["params", "--backbone", "vit_b", "--tuner", "sam_parser_lora", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["trainable_by_group"] == {"adapter": 512 + 12 * 4 * (768 + 3 * 768), "mask_decoder": FULL_DEC}


def test_conv_lora_vit_h_ratio_matches_the_paper(capsys) -> None:
    main(["params", "--backbone", "vit_h", "--tuner", "conv_lora"])
    out = capsys.readouterr().out
    assert "trainable 4,020,096" in out and "ratio     0.63%" in out
    # SAM ViT-H has 641,090,608 parameters; Conv-LoRA adds 514,560 and drops 3 of 4 mask tokens + MLPs (420,192).
    assert "total     641,184,976" in out


def test_console_script_and_errors(capsys) -> None:
    exe = Path(sys.executable).parent / "medsam-peft"  # the installed console script of this environment
    done = subprocess.run([exe, "params", "--backbone", "vit_b", "--tuner", "lora", "--rank", "4", "--json"],
                          capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)["trainable_by_group"]["adapter"] == 12 * 4 * (768 + 3 * 768)
    assert main(["params", "--tuner", "nope"]) == 2
    assert "unknown tuner 'nope'" in capsys.readouterr().err
    assert main(["params", "--tuner", "lora", "--option", "target_modules=image_encoder\\.nothing"]) == 2
    assert "matched no module" in capsys.readouterr().err


def test_prepare_colin27(tmp_path, capsys) -> None:
    assert main(["prepare", "colin27_aal", "--root", str(tmp_path), "--structures", "77,78", "--min-pixels", "100"]) == 0
    datalist = json.loads((tmp_path / "datalist.json").read_text())
    out = capsys.readouterr().out
    assert f"{len(datalist['training'])} training, {len(datalist['validation'])} validation" in out
    assert {e["structure"] for e in datalist["training"]} == {"Thalamus_L"}
    assert {e["structure"] for e in datalist["validation"]} == {"Thalamus_R"}
    assert main(["prepare", "kvasir_nope", "--root", str(tmp_path)]) == 2


def test_lite_medsam_counts_on_the_meta_device_equal_a_real_build(capsys) -> None:
    """TinyViT cannot be constructed on the meta device (its __init__ reads a tensor's value): the structure-only
    build of `params` and of `bench`'s mergeability check must still count what a real build holds."""
    from medsam_peft.tuners import build_tuned_sam

    assert main(["params", "--backbone", "lite_medsam", "--tuner", "conv_lora", "--image-size", "256", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    real = build_tuned_sam("lite_medsam", None, "conv_lora", image_size=256)
    assert report["trainable"] == sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert report["total"] == sum(p.numel() for p in real.parameters())
    meta = build_tuned_sam("lite_medsam", None, "lora", device="meta")
    assert {p.device.type for p in meta.parameters()} == {"meta"}

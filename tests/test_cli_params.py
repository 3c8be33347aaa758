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
def test_params_json(backbone, tuner, trainable, groups, capsys) -> None:
    assert main(["params", "--backbone", backbone, "--tuner", tuner, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trainable"] == trainable
    assert report["trainable_by_group"] == groups
    assert report["ratio"] == pytest.approx(trainable / report["total"])


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

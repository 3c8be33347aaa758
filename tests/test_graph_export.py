"""`medsam-peft export` on real LiteMedSAM (the bundled weights) with a LoRA adapter (merged into the base weights)
and a Conv-LoRA adapter (traced unmerged): the written TorchScript and ONNX files, run by torch.jit and
onnxruntime on a real Colin27 slice the export never saw, equal the eager tuned model within 1e-4."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from medsam_peft.cli import main as cli_main
from medsam_peft.transforms import ResizeLongestSide, ScaleBox, ScaleIntensityByDtype
from medsam_peft.transforms.io.array import LoadImage2D
from medsam_peft.tuners import build_tuned_sam, save_adapter
from tests.conftest import COLIN27_DIR


@pytest.fixture(scope="module")
def colin27_slices(tmp_path_factory):
    from medsam_peft.data import prepare_colin27_aal

    root = tmp_path_factory.mktemp("colin27_export")
    entries = json.loads(prepare_colin27_aal(root, structures=(77,), source=COLIN27_DIR).read_text())["training"]
    return [root / entries[0]["image"], root / entries[len(entries) // 2]["image"]]


def _run_folder(tmp_path, tuner: str):
    """A training run's folder as the trainer leaves it: the adapter (perturbed: a fresh LoRA is the identity) and
    run_config.json."""
    torch.manual_seed(0)
    model = build_tuned_sam("lite_medsam", "bundled", tuner, image_size=256, device="cpu").eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and ("lora" in name):
                param.add_(0.02 * torch.randn_like(param))
    run = tmp_path / "run"
    save_adapter(model, run / "checkpoints" / "adapter_best.safetensors")
    (run / "run_config.json").write_text(json.dumps({"backbone": "lite_medsam", "checkpoint": "bundled",
                                                     "image_size": 256, "squash": False, "precision": "auto",
                                                     "prompt": "box"}))
    return run, model


def _input(path, box):
    loaded = ScaleIntensityByDtype()(LoadImage2D()(path))
    h, w = loaded.shape[1:]
    return ResizeLongestSide(256, "bilinear")(loaded).as_tensor()[None].float(), ScaleBox(256)(box, (h, w))[None]


@pytest.mark.parametrize(("tuner", "merged"), [("lora", True), ("conv_lora", False)])
def test_torchscript_and_onnx_equal_the_eager_model(tmp_path, colin27_slices, capsys, tuner, merged) -> None:
    run, eager = _run_folder(tmp_path, tuner)
    out = tmp_path / "graph"
    assert cli_main(["export", "--adapter", str(run), "--output", str(out), "--example", str(colin27_slices[0]),
                     "--box", "60", "70", "120", "130"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "export.json").read_text())
    assert summary["merged"] is merged and summary["inputs"] == {"image": [1, 3, 256, 256], "boxes": [1, 4]}
    assert f"({'merged into the base weights' if merged else 'unmerged'})" in printed
    # independently of the export's own check: another real slice and box, through torch.jit and onnxruntime
    image, box = _input(colin27_slices[1], [40, 50, 100, 140])
    with torch.no_grad():
        expected = eager(image, box)
        scripted = torch.jit.load(str(out / "model.ts"))
        traced = scripted(image, box)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    from_onnx = torch.from_numpy(session.run(None, {"image": image.numpy(), "boxes": box.numpy()})[0])
    assert expected.shape == traced.shape == from_onnx.shape == (1, 1, 256, 256)
    assert (expected > 0).float().mean() > 0.001  # a real mask, not an all-background output
    assert float((traced - expected).abs().max()) < 1e-4
    assert float((from_onnx - expected).abs().max()) < 1e-4
    # merged: no adapter tensor left in either graph; unmerged: the Conv-LoRA experts are in it
    script_names = set(scripted.state_dict())
    onnx_names = {t.name for t in onnx.load(str(out / "model.onnx")).graph.initializer}
    assert any("lora" in n for n in script_names) is not merged
    assert any("lora" in n for n in onnx_names) is not merged


def test_merge_yes_on_conv_lora_is_refused_in_one_line(tmp_path, capsys) -> None:
    run, _ = _run_folder(tmp_path, "conv_lora")
    assert cli_main(["export", "--adapter", str(run), "--output", str(tmp_path / "g"), "--merge", "yes"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "cannot be folded into the base weights" in err
    assert not (tmp_path / "g").exists()


def test_prompt_free_model_exports_an_image_only_graph(tmp_path, capsys) -> None:
    """A prompt-free run (Conv-LoRA's mode) exports ``image -> masks``; each graph reproduces the eager model on the
    check image and its mirror (export.json), and the ONNX graph has exactly one input."""
    torch.manual_seed(0)
    model = build_tuned_sam("vit_tiny", None, "lora", image_size=128, device="cpu").eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and "lora" in name:
                param.add_(0.05 * torch.randn_like(param))
    run = tmp_path / "run"
    save_adapter(model, run / "adapter_final.safetensors")
    (run / "run_config.json").write_text(json.dumps({"backbone": "vit_tiny", "checkpoint": "", "image_size": 128,
                                                     "prompt": "none"}))
    assert cli_main(["export", "--adapter", str(run / "adapter_final.safetensors"), "--output", str(tmp_path / "g")]) == 0
    summary = json.loads((tmp_path / "g" / "export.json").read_text())
    assert summary["inputs"] == {"image": [1, 3, 128, 128]} and summary["merged"] is True
    assert all(check["max_abs_diff"] < 1e-4 for check in summary["checks"].values()), summary["checks"]
    graph = onnx.load(str(tmp_path / "g" / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["masks"]

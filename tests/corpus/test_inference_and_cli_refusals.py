"""Inference and evaluation layered over a trained run, and the `medsam-peft` command line, fed bad requests, bad
adapters and bad arguments: one line naming the file, entry or argument, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medsam_peft.tuners.adapter_io import read_adapter, write_adapter_payload
from tests.corpus.conftest import TINY

DEMO = "bundles/conv_lora_demo.json"
INFER = [DEMO, "configs/inference.json"]
EVALUATE = [DEMO, "configs/evaluate.json"]


@pytest.fixture(scope="module")
def trained(entry_points, colin27_data, tmp_path_factory) -> dict[str, Path]:
    """A one-epoch run of the demo bundle (tiny ViT) whose adapter the cases below use."""
    out = tmp_path_factory.mktemp("corpus_run") / "run"
    outcome = entry_points.bundle(DEMO, {"dataset_dir": str(colin27_data), "output_dir": str(out), **TINY,
                                         "experiment_name": "corpus"})
    assert outcome.returncode == 0, outcome.stderr[-3000:]
    lists = json.loads((colin27_data / "datalist.json").read_text())
    return {"out": out, "data": colin27_data, "image": colin27_data / lists["validation"][0]["image"]}


def _overrides(trained, **extra: str) -> dict[str, str]:
    return {"dataset_dir": str(trained["data"]), "output_dir": str(trained["out"]), **TINY, **extra}


def _requests(tmp_path: Path, entries: list | str) -> str:
    path = tmp_path / "requests.json"
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
    return str(path)


def _image(trained) -> str:
    return str(trained["image"])


REQUESTS = {
    "missing_box": (lambda t: [{"image": _image(t), "box": [10, 10, 60, 60]}, {"image": _image(t), "name": "b"}],
                    ["entry [1] has no 'box'", "prompted with a box"]),
    "invalid_json": (lambda t: '[{"image": "a.png", }', ["is not valid JSON", "line 1"]),
    "not_a_list": (lambda t: {"image": _image(t)}, ["must be a non-empty JSON list"]),
    "missing_image": (lambda t: [{"image": "nowhere/gone.png", "box": [1, 1, 9, 9]}],
                      ["entry [0]: image", "gone.png does not exist"]),
    "zero_area_box": (lambda t: [{"image": _image(t), "box": [40, 40, 40, 90]}],
                      ["entry [0]: 'box' [40, 40, 40, 90] has zero or negative area"]),
    "box_of_three": (lambda t: [{"image": _image(t), "box": [1, 2, 3]}], ["entry [0]: 'box' must be [x0, y0, x1, y1]"]),
    "same_output_name": (lambda t: [{"image": _image(t), "box": [1, 1, 50, 50]},
                                    {"image": _image(t), "box": [5, 5, 60, 60]}],
                         ["entry [1] writes the same output name", "as entry [0]"]),
}


@pytest.mark.parametrize("case", sorted(REQUESTS))
def test_request_list_is_checked_before_the_first_prediction(entry_points, trained, tmp_path, case) -> None:
    """Regression: a request without a box stopped the whole run with KeyError: 'box' after the first image."""
    make, fragments = REQUESTS[case]
    requests_file = _requests(tmp_path, make(trained))
    masks = tmp_path / "masks"
    line = entry_points.bundle(INFER, _overrides(trained, infer_datalist=requests_file, infer_dir=str(masks))).refused(
        1, *fragments)
    assert requests_file in line
    assert not masks.exists()  # nothing predicted, nothing half-written


def test_inference_without_a_request_list_says_how_to_give_one(entry_points, trained, tmp_path) -> None:
    entry_points.bundle(INFER, _overrides(trained)).refused(1, "inference needs --infer_datalist FILE.json")


def test_bit_flipped_adapter_is_refused_naming_it(entry_points, trained, tmp_path) -> None:
    """A 4 KiB-scale corruption of a tensor (a value changed) loaded silently before adapters carried a checksum."""
    bad = tmp_path / "adapter.safetensors"
    payload = read_adapter(trained["out"] / "checkpoints" / "adapter_best.safetensors")
    first = sorted(payload["state_dict"])[0]
    payload["state_dict"][first].view(-1)[:1024] += 1e-3
    write_adapter_payload(payload, bad)  # the recorded checksum kept
    entry_points.bundle(EVALUATE, _overrides(trained, adapter_file=str(bad), eval_dir=str(tmp_path / "eval"))).refused(
        1, f"adapter file {bad} is corrupt", "checksum")
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize(("content", "fragment"), [
    (b"PK\x03\x04 definitely not a torch archive", "cannot be read"),
    (None, "does not exist"),
], ids=["truncated", "missing"])
def test_unusable_adapter_file_for_evaluation(entry_points, trained, tmp_path, content, fragment) -> None:
    bad = tmp_path / "adapter.pt"
    if content is not None:
        bad.write_bytes(content)
    entry_points.bundle(EVALUATE, _overrides(trained, adapter_file=str(bad), eval_dir=str(tmp_path / "eval"))).refused(
        1, str(bad), fragment)


# ---- the medsam-peft command line ------------------------------------------------------------------------------------
def test_export_bundle_of_a_folder_without_adapter(entry_points, tmp_path) -> None:
    entry_points.cli(["export-bundle", str(tmp_path / "no_run"), str(tmp_path / "bundle")]).refused(
        2, "no adapter in", "pass the training run's output_dir or --adapter FILE")
    assert not (tmp_path / "bundle").exists()


def test_export_bundle_into_a_folder_in_use(entry_points, trained, tmp_path) -> None:
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    entry_points.cli(["export-bundle", str(trained["out"]), str(target)]).refused(2, "exists and is not empty")
    assert [p.name for p in target.iterdir()] == ["notes.txt"] and (target / "notes.txt").read_text() == "keep me"


def test_export_bundle_refuses_a_corrupt_adapter(entry_points, trained, tmp_path) -> None:
    bad = tmp_path / "adapter.pt"  # the torch.save container of earlier versions is checked alike
    payload = read_adapter(trained["out"] / "adapter_final.safetensors")
    payload["state_dict"][sorted(payload["state_dict"])[-1]].view(-1)[0] *= -2.0
    torch.save(payload, bad)
    entry_points.cli(["export-bundle", str(trained["out"]), str(tmp_path / "bundle"), "--adapter", str(bad)]).refused(
        1, f"adapter file {bad} is corrupt")
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize(("argv", "code", "fragments"), [
    (["params", "--tuner", "nope"], 2, ["unknown tuner 'nope'", "conv_lora"]),
    (["params", "--backbone", "vit_q"], 2, ["unknown backbone 'vit_q'"]),
    (["params", "--option", "r"], 2, ["--option expects KEY=VALUE, got 'r'"]),
    (["prepare", "kvasr", "--root", "/tmp/unused"], 2, ["unknown dataset 'kvasr'", "kvasir"]),
], ids=["unknown_tuner", "unknown_backbone", "option_without_value", "unknown_dataset"])
def test_command_line_mistakes(entry_points, argv, code, fragments) -> None:
    entry_points.cli(argv).refused(code, *fragments)

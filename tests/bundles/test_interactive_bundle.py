"""The interactive demo bundle through `python -m monai.bundle run` (tiny ViT, real Colin27/AAL slices, 2 epochs):
click-protocol metrics in the log, metric_report.txt and MLflow; configs/evaluate.json layered on it writes each
protocol channel as a PNG at the original size, and its metrics equal a NumPy re-computation from those files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from PIL import Image

from medsam_peft.tuners.adapter_io import read_adapter
from tests.bundle_runner import run_bundle as _run

REPO = Path(__file__).resolve().parents[2]
CLICKS = 3


@pytest.fixture(scope="module")
def interactive_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("interactive")
    overrides = {"bundle_root": str(REPO), "dataset_dir": str(out / "data"), "output_dir": str(out / "run"),
                 "backbone": "vit_tiny", "checkpoint": "", "image_size": "128", "slice_step": "12", "max_epochs": "2",
                 "overlays": "1", "experiment_name": "interactive_test", "clicks": str(CLICKS),
                 "max_corrections": "3", "key_metric": "val_dice_click1",
                 # the samples of one slice batched together, clicking on each other's structures (non-default)
                 "group_by_image": "True", "hard_negatives": "1", "batch_size": "2", "click_radius": "6",
                 "multimask": "True"}
    log = _run(["bundles/conv_lora_demo_interactive.json"], overrides)
    return out, overrides, log


def test_click_protocol_metrics_are_reported_zero_shot_and_tuned(interactive_run) -> None:
    out, _, log = interactive_run
    lines = (out / "run" / "metric_report.txt").read_text().splitlines()
    best_lines = [line for line in lines if ": best " in line]
    report = [line for line in lines if ": best " not in line]
    names = [line.split(":")[0] for line in report]
    assert names == ["val_dice_click1", "val_box_dice", "val_dice_click3", "val_noc85", "val_noc90"], report
    assert "val_dice_click1 zero-shot (before tuning)" in log
    values = {line.split(":")[0]: [float(v) for v in re.findall(r"(?:zero-shot|tuned) ([\d.]+)", line)]
              for line in report}
    assert all(1.0 <= v <= CLICKS for v in values["val_noc85"] + values["val_noc90"])
    assert all(0.0 <= v <= 1.0 for k in ("val_box_dice", "val_dice_click1", "val_dice_click3") for v in values[k])
    mlflow.set_tracking_uri("sqlite:///" + str(out / "run" / "mlruns.db"))
    run = mlflow.search_runs(experiment_names=["interactive_test"]).iloc[0]
    assert run["metrics.val_dice_click3"] == pytest.approx(values["val_dice_click3"][1], abs=1e-4)
    history = mlflow.MlflowClient().get_metric_history(run["run_id"], "val_noc90")
    assert [m.step for m in history] == [0, 1, 2]
    # the report names the best epoch when it is not the last: the epoch adapter_best.safetensors was saved at
    key = {m.step: m.value for m in mlflow.MlflowClient().get_metric_history(run["run_id"], "val_dice_click1")}
    best_epoch = max(sorted(key), key=lambda step: key[step])
    saved = read_adapter(out / "run" / "checkpoints" / "adapter_best.safetensors")["metadata"]["validation"]
    assert saved["epoch"] == best_epoch and saved["metrics"]["val_dice_click1"] == pytest.approx(key[best_epoch])
    if best_epoch != 2 and key[best_epoch] != key[2]:
        assert best_lines == [f"val_dice_click1: best {key[best_epoch]:.4f} at epoch {best_epoch} "
                              "(checkpoints/adapter_best.safetensors, what predict and export-bundle use)"]
    else:
        assert best_lines == []
    assert json.loads((out / "run" / "run_config.json").read_text())["prompt"] == "interactive"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2 * float(np.logical_and(a, b).sum()) / float(total)


def test_evaluate_writes_every_click_and_its_metrics_match_numpy(interactive_run) -> None:
    out, overrides, _ = interactive_run
    _run(["bundles/conv_lora_demo_interactive.json", "configs/evaluate.json"], overrides)
    metrics = json.loads((out / "run" / "eval" / "metrics.json").read_text())["metrics"]
    per_round: list[list[float]] = []
    for item in load_decathlon_datalist(out / "data" / "datalist.json", data_list_key="validation",
                                        base_dir=out / "data"):
        truth = np.asarray(Image.open(item["label"])) > 127
        stem = Path(item["label"]).name.split(".")[0]
        preds = [np.asarray(Image.open(out / "run" / "eval" / "predictions" / f"{stem}_pred_ch{c}.png")) > 127
                 for c in range(CLICKS + 1)]
        assert all(p.shape == truth.shape for p in preds)  # every channel restored to the original size
        per_round.append([_dice(p, truth) for p in preds])
    dice = np.asarray(per_round)
    assert metrics["val_box_dice"] == pytest.approx(dice[:, 0].mean(), abs=1e-4)
    assert metrics["val_dice_click1"] == pytest.approx(dice[:, 1].mean(), abs=1e-4)
    assert metrics["val_dice_click3"] == pytest.approx(dice[:, 3].mean(), abs=1e-4)
    for percent in (85, 90):
        reached = dice[:, 1:] >= percent / 100
        noc = np.where(reached.any(1), reached.argmax(1) + 1, CLICKS)
        assert metrics[f"val_noc{percent}"] == pytest.approx(noc.mean(), abs=1e-6)
    assert len(set(np.round(dice[:, 1:].mean(0), 6))) > 1  # the clicks change the prediction


def test_served_clicks_decode_as_the_click_protocol_and_an_added_click_costs_one_decoder_pass(interactive_run) -> None:
    """The label server's predictor on the run: clicks sent as an annotator sends them (each request all clicks so
    far) give the click protocol's channels (SimulatedAnnotator: same rounds, same mask prompts with the clicks
    written in); the second and third request reuse the image embedding and the earlier rounds."""
    import torch
    from monai.bundle import ConfigParser

    from medsam_peft.engines import AutocastInferer, SimulatedAnnotator
    from medsam_peft.engines.interactive import centre_click
    from medsam_peft.label.predictor import BundlePredictor, Prompts

    out, overrides, _ = interactive_run
    run = out / "run"
    settings = json.loads((run / "run_config.json").read_text())
    assert settings["click_radius"] == float(overrides["click_radius"]) and settings["multimask"] is True
    predictor = BundlePredictor.from_run(run, run / "checkpoints" / "adapter_best.safetensors")
    assert (predictor.click_radius, predictor.multimask) == (settings["click_radius"], True)
    config = ConfigParser()
    config.read_config(str(REPO / "bundles/conv_lora_demo_interactive.json"))
    config.update({k: v for k, v in overrides.items() if k in ("dataset_dir", "bundle_root")})
    config.update({"image_size": 128, "slice_step": 12})
    item = config.get_parsed_content("validate#dataset")[0]
    image, label = item["image"][None].float(), item["label"][None].float()  # 128 x 128: image pixels = network's
    sam = predictor._sam()
    annotator = SimulatedAnnotator(clicks=CLICKS, multimask=True, click_radius=settings["click_radius"])
    dtype = AutocastInferer(settings.get("precision", "auto")).dtype_for(torch.device("cpu"))
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        protocol = sam(image, torch.as_tensor(item["box"])[None].float(), target=label, interaction=annotator).float()
    target, previous, clicks = label[0, 0].numpy() > 0.5, np.zeros((128, 128), bool), []
    for k in range(1, CLICKS + 1):
        clicks.append(centre_click(previous, target))
        previous = protocol[0, k].numpy() > 0
    for k in range(1, CLICKS + 1):
        counts: dict[str, int] = {}
        prompts = Prompts(None, [[x, y] for x, y, _ in clicks[:k]], [label for _, _, label in clicks[:k]])
        _, low_res = predictor.predict_image(image[0, 0].numpy(), prompts, counts=counts)
        served = sam.upscale(low_res, (128, 128))
        torch.testing.assert_close(served, protocol[:, k : k + 1], atol=2e-2, rtol=1e-2)
        assert counts == ({"encoder_passes": 1, "decoder_passes": 2} if k == 1 else
                          {"encoder_passes": 0, "decoder_passes": 1})
    # the same clicks again, reordered: the earlier rounds no longer apply and every round is decoded again
    counts = {}
    reordered = clicks[1:] + clicks[:1]
    predictor.predict_image(image[0, 0].numpy(), Prompts(None, [[x, y] for x, y, _ in reordered],
                                                         [lab for _, _, lab in reordered]), counts=counts)
    assert counts == {"encoder_passes": 0, "decoder_passes": CLICKS + 1}  # + the multimask pass of the first click

"""The demo bundle file, run through `python -m monai.bundle run` on real Colin27/AAL slices with tiny settings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist
from PIL import Image

from medsam_peft import load_tuned_sam
from medsam_peft.transforms import ResizeLongestSide

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    overrides = {
        "bundle_root": str(REPO), "dataset_dir": str(out / "data"), "output_dir": str(out / "run"),
        "backbone": "vit_tiny", "checkpoint": "", "image_size": "128", "slice_step": "12", "max_epochs": "1",
        "overlays": "2", "experiment_name": "demo_test",
    }
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO / "bundles/conv_lora_demo.json")]
    for key, value in overrides.items():
        args += [f"--{key}", value]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout + done.stderr


def test_report_and_artifacts(demo_run) -> None:
    out, log = demo_run
    report = (out / "run" / "metric_report.txt").read_text()
    match = re.match(r"val_mean_dice: zero-shot ([\d.]+) -> tuned ([\d.]+) \(epoch 1", report)
    assert match, report
    assert "val_mean_dice zero-shot (before tuning)" in log
    assert len(list((out / "run" / "overlays").glob("overlay_*.png"))) == 2
    assert (out / "run" / "checkpoints" / "adapter_best.pt").is_file()


def test_mlflow_holds_params_and_metrics(demo_run) -> None:
    out, _ = demo_run
    mlflow.set_tracking_uri("sqlite:///" + str(out / "run" / "mlruns.db"))
    runs = mlflow.search_runs(experiment_names=["demo_test"])
    assert len(runs) == 1 and runs.loc[0, "status"] == "FINISHED"
    assert runs.loc[0, "params.tuner"] == "conv_lora" and runs.loc[0, "params.backbone"] == "vit_tiny"
    tuned = float(re.search(r"tuned ([\d.]+)", (out / "run" / "metric_report.txt").read_text()).group(1))
    assert runs.loc[0, "metrics.val_mean_dice"] == pytest.approx(tuned, abs=1e-4)
    assert runs.loc[0, "metrics.train_mean_dice"] >= 0 and np.isfinite(runs.loc[0, "metrics.train_loss"])
    client = mlflow.MlflowClient()
    history = client.get_metric_history(runs.loc[0, "run_id"], "val_mean_dice")
    assert [m.step for m in history] == [0, 1]  # zero-shot validation, then after epoch 1
    report = json.loads((out / "run" / "parameter_report.json").read_text())
    assert int(runs.loc[0, "params.trainable_params"]) == report["trainable"] > 0
    assert json.loads(runs.loc[0, "params.tuner_options"]) == {"r": 3, "alpha": 32, "num_experts": 8, "mask_tokens": None}
    artifacts = {a.path for a in client.list_artifacts(runs.loc[0, "run_id"])}
    assert {"parameter_report.json", "adapter_best.pt", "overlay_00.png"} <= artifacts


def test_final_adapter_reproduces_the_reported_dice_independently(demo_run) -> None:
    """Reload adapter_final.pt, predict the validation slices ourselves and compute Dice with NumPy."""
    out, _ = demo_run
    torch.manual_seed(0)
    model = load_tuned_sam(out / "run" / "adapter_final.pt").eval()
    resize, resize_mask = ResizeLongestSide(128, "bilinear"), ResizeLongestSide(128, "nearest-exact")
    dices = []
    for item in load_decathlon_datalist(out / "data" / "datalist.json", data_list_key="validation", base_dir=out / "data"):
        image = torch.as_tensor(np.asarray(Image.open(item["image"]), dtype=np.float32) / 255.0)[None].expand(3, -1, -1)
        mask = resize_mask(torch.as_tensor(np.asarray(Image.open(item["label"])) > 127, dtype=torch.float32)[None])[0]
        ys, xs = np.nonzero(mask.numpy())
        box = torch.tensor([[xs.min(), ys.min(), xs.max(), ys.max()]], dtype=torch.float32)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(resize(image)[None], boxes=box).float()
        pred = (torch.sigmoid(logits[0, 0]) > 0.5).numpy()
        truth = mask.numpy() > 0.5
        dices.append(2 * np.logical_and(pred, truth).sum() / (pred.sum() + truth.sum()))
    tuned = float(re.search(r"tuned ([\d.]+)", (out / "run" / "metric_report.txt").read_text()).group(1))
    assert float(np.mean(dices)) == pytest.approx(tuned, abs=2e-3)

"""The multi-class demo bundle (Colin27's 12 AAL subcortical structures as classes) as a user runs it: training for
two epochs, configs/evaluate.json at the images' original size, the exported bundle's own evaluation and inference;
every reported mIoU is recomputed with scikit-learn from the written class-id PNGs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix

from medsam_peft.cli import main as cli_main
from medsam_peft.tuners.adapter_io import read_adapter
from tests.bundle_runner import run_bundle

REPO = Path(__file__).resolve().parents[2]
BUNDLE = "bundles/conv_lora_demo_multiclass.json"
CLASSES = 13


# multiclass_run (tests/conftest.py): the bundle trained for two epochs on every 5th slice


def _ious(labels: list[np.ndarray], preds: list[np.ndarray]) -> np.ndarray:
    y_true, y_pred = np.concatenate([a.ravel() for a in labels]), np.concatenate([a.ravel() for a in preds])
    cm = confusion_matrix(y_true, y_pred, labels=range(CLASSES))
    return np.diag(cm) / np.maximum(cm.sum(0) + cm.sum(1) - np.diag(cm), 1e-16)


def test_training_reports_the_foreground_miou_for_every_epoch(multiclass_run) -> None:
    out, _, _ = multiclass_run
    report = (out / "run" / "metric_report.txt").read_text()
    assert re.match(r"val_foreground_miou: zero-shot ([\d.]+) -> tuned ([\d.]+) \(epoch [12]", report), report
    datalist = json.loads((out / "data" / "datalist.json").read_text())
    assert len(datalist["meta"]["classes"]) == CLASSES and datalist["meta"]["classes"][12] == "Thalamus_R"
    mlflow.set_tracking_uri("sqlite:///" + str(out / "run" / "mlruns.db"))
    run = mlflow.search_runs(experiment_names=["mc_test"]).iloc[0]
    assert run["status"] == "FINISHED" and run["params.query_init"] == "class"
    history = mlflow.MlflowClient().get_metric_history(run["run_id"], "val_foreground_miou")
    assert [m.step for m in history] == [0, 1, 2]  # zero-shot, then both epochs
    ious = [run[f"metrics.val_iou_{name}"] for name in datalist["meta"]["classes"]]
    assert run["metrics.val_miou"] == pytest.approx(np.mean(ious), abs=1e-6)
    assert history[-1].value == pytest.approx(np.mean(ious[1:]), abs=1e-6)
    meta = read_adapter(out / "run" / "adapter_final.safetensors")["metadata"]
    assert meta["decoder"] == {"mask_tokens": CLASSES, "num_classes": CLASSES, "query_init": "class"}


def test_evaluate_at_original_size_and_the_exported_bundle_agree_with_sklearn(multiclass_run, tmp_path) -> None:
    out, overrides, _ = multiclass_run
    run_bundle([BUNDLE, "configs/evaluate.json"], {**overrides, "eval_batch_size": "3"})
    metrics = json.loads((out / "run" / "eval" / "metrics.json").read_text())["metrics"]
    datalist = json.loads((out / "data" / "datalist.json").read_text())
    labels, preds = [], []
    for entry in datalist["validation"]:
        label = np.asarray(Image.open(out / "data" / entry["label"]))
        pred = np.asarray(Image.open(out / "run" / "eval" / "predictions" / (Path(entry["label"]).stem + "_pred.png")))
        assert pred.shape == label.shape and set(np.unique(pred)) <= set(range(CLASSES))  # class ids, original size
        labels.append(label)
        preds.append(pred)
    iou = _ious(labels, preds)
    assert metrics["val_foreground_miou"] == pytest.approx(iou[1:].mean(), abs=1e-6)
    assert metrics["val_miou"] == pytest.approx(iou.mean(), abs=1e-6)
    assert metrics["val_iou_Putamen_L"] == pytest.approx(iou[7], abs=1e-6)

    bundle = tmp_path / "bundle"
    assert cli_main(["export-bundle", str(out / "run"), str(bundle), "--label", "subcortical"]) == 0
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert channels["0"] == "background" and channels["12"] == "Thalamus_R" and len(channels) == CLASSES
    # MONAI's own check of network_def against the metadata: a (1, 13, 256, 256) tensor of class probabilities
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file",
                           "configs/metadata.json", "--config_file", "configs/inference.json"], cwd=bundle,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "verified with no error" in done.stdout + done.stderr, done.stderr[-2000:]
    exported = tmp_path / "exported_eval"
    run_bundle([str(bundle / "configs" / "evaluate.json")],
               {"bundle_root": str(bundle), "datalist": str(out / "data" / "datalist.json"),
                "output_dir": str(exported)})
    again = json.loads((exported / "metrics.json").read_text())["metrics"]
    assert again["val_foreground_miou"] == pytest.approx(metrics["val_foreground_miou"], abs=1e-6)

    # inference, exported and layered on the training bundle, in batches of 2: the evaluation's class-id maps
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps([{"image": str(out / "data" / e["image"])} for e in datalist["validation"]]))
    run_bundle([str(bundle / "configs" / "inference.json")],
               {"bundle_root": str(bundle), "datalist": str(requests), "output_dir": str(tmp_path / "infer"),
                "infer_batch_size": "2"})
    run_bundle([BUNDLE, "configs/inference.json"], {**overrides, "infer_datalist": str(requests),
                                                    "infer_batch_size": "2"})
    # and `medsam-peft predict` on the exported bundle (the MONAI Label server's predictor)
    first = out / "data" / datalist["validation"][0]["image"]
    assert cli_main(["predict", "--adapter", str(bundle), "--input", str(first), "--output", str(tmp_path / "cli"),
                     "--prompt-free", "--quiet"]) == 0
    # ... and on the training run's folder: the adapter's decoder makes it a class-id map there too (it was binarised)
    assert cli_main(["predict", "--adapter", str(out / "run"), "--input", str(first), "--output",
                     str(tmp_path / "cli_run"), "--quiet"]) == 0
    for entry, pred in zip(datalist["validation"], preds):
        name = Path(entry["image"]).stem + "_pred.png"
        assert np.array_equal(np.asarray(Image.open(tmp_path / "infer" / name)), pred)
        assert np.array_equal(np.asarray(Image.open(out / "run" / "inference" / name)), pred)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cli" / (first.stem + "_pred.png"))), preds[0])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cli_run" / (first.stem + "_pred.png"))), preds[0])
    assert json.loads((out / "run" / "run_config.json").read_text())["num_classes"] == CLASSES

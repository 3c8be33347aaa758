"""A training run killed (SIGKILL) after an epoch continues from its checkpoint and ends exactly where an
uninterrupted run ends: same adapter tensors, same final validation metric, and one MLflow run per output folder with
the complete histories (3 epochs and overridden batch size / learning rate: a run with max_epochs != 1 used to lose
its params, its training metrics and its artifacts)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import mlflow
import torch

from medsam_peft.tuners import read_adapter
from tests.bundles.test_demo_bundle import REPO


def _command(out, data) -> list[str]:
    overrides = {"bundle_root": str(REPO), "dataset_dir": str(data), "output_dir": str(out), "backbone": "vit_tiny",
                 "checkpoint": "", "image_size": "128", "slice_step": "8", "max_epochs": "3", "overlays": "2",
                 "batch_size": "3", "learning_rate": "0.0002", "experiment_name": "resume_test"}
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO / "bundles/conv_lora_demo.json")]
    for key, value in overrides.items():
        args += [f"--{key}", value]
    return args


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def _mlflow_run(out):
    """The only MLflow run in the output folder's store, with its metric histories and artifact names."""
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("resume_test").experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    history = {name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
               for name in ("train_loss", "train_mean_dice", "val_mean_dice", "val_mean_iou")}
    return run, history, {a.path for a in client.list_artifacts(run.info.run_id)}


def _final_metric(log: str) -> float:
    return float(re.findall(r"val_mean_dice after epoch 3: ([\d.]+)", log)[-1])


def test_killed_run_resumes_to_the_same_result(tmp_path) -> None:
    data = tmp_path / "data"
    straight = subprocess.run(_command(tmp_path / "straight", data), capture_output=True, text=True, env=_env(),
                              cwd=REPO, timeout=900)
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "killed"
    resume_file = out / "checkpoints" / "resume.pt"
    process = subprocess.Popen(_command(out, data), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                               cwd=REPO)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if resume_file.exists() and torch.load(resume_file, weights_only=True)["epoch"] >= 1:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved_epoch = torch.load(resume_file, weights_only=True)["epoch"]
    assert 1 <= saved_epoch < 3 and not (out / "adapter_final.safetensors").exists()

    resumed = subprocess.run(_command(out, data), capture_output=True, text=True, env=_env(), cwd=REPO, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"resumed from {resume_file} at epoch {saved_epoch}" in log
    assert f"epoch {saved_epoch}/3" not in log  # finished epochs are not trained again
    assert _final_metric(log) == _final_metric(straight.stdout + straight.stderr)
    a = read_adapter(tmp_path / "straight" / "adapter_final.safetensors")["state_dict"]
    b = read_adapter(out / "adapter_final.safetensors")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # MLflow: the uninterrupted run has its overridden params, a train/val history per epoch and its artifacts ...
    run, history, artifacts = _mlflow_run(tmp_path / "straight")
    assert run.info.status == "FINISHED"
    assert {k: run.data.params[k] for k in ("max_epochs", "batch_size", "learning_rate")} == {
        "max_epochs": "3", "batch_size": "3", "learning_rate": "0.0002"}
    assert [step for step, _ in history["train_loss"]] == [1, 2, 3]
    assert [step for step, _ in history["val_mean_dice"]] == [0, 1, 2, 3]  # zero-shot, then every epoch
    assert {"parameter_report.json", "run_config.json", "metric_report.txt", "adapter_best.safetensors",
            "overlay_00.png"} <= artifacts
    # ... and the killed run, resumed, continued its own MLflow run (found by its output folder) to the same history
    resumed_run, resumed, resumed_artifacts = _mlflow_run(out)
    assert resumed_run.info.status == "FINISHED" and resumed_run.data.params["max_epochs"] == "3"
    assert resumed["train_loss"] == history["train_loss"] and resumed["train_mean_dice"] == history["train_mean_dice"]
    assert sorted(set(resumed["val_mean_dice"])) == history["val_mean_dice"]  # the resumed start re-validates once
    assert artifacts == resumed_artifacts

    # the same folder started again with another learning rate: refused with one line naming the setting, before any
    # epoch; the finished run's files and MLflow run stay as they were (was: "nothing left to train" and the old run's
    # metric report, as if the new setting had been trained)
    before = read_adapter(tmp_path / "straight" / "adapter_final.safetensors")["state_dict"]
    changed = [a if a != "0.0002" else "0.0005" for a in _command(tmp_path / "straight", data)]
    refused = subprocess.run(changed + ["--max_epochs", "4"], capture_output=True, text=True, env=_env(), cwd=REPO,
                             timeout=900)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 1 and len(errors) == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "was written by a run with other settings (settings: learning_rate 0.0002 in the file, 0.0005 now)" \
        in errors[0] and "--resume False" in errors[0], errors[0]
    assert "epoch 4/4" not in refused.stdout + refused.stderr
    after = read_adapter(tmp_path / "straight" / "adapter_final.safetensors")["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    run, history_after, _ = _mlflow_run(tmp_path / "straight")
    assert history_after["train_loss"] == history["train_loss"]

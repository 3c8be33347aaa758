"""A training run killed (SIGKILL) after an epoch continues from its checkpoint and ends exactly where an
uninterrupted run ends: same adapter tensors, same final validation metric."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import torch

from tests.bundles.test_demo_bundle import REPO


def _command(out, data) -> list[str]:
    overrides = {"bundle_root": str(REPO), "dataset_dir": str(data), "output_dir": str(out), "backbone": "vit_tiny",
                 "checkpoint": "", "image_size": "128", "slice_step": "8", "max_epochs": "3", "overlays": "0",
                 "experiment_name": "resume_test"}
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO / "bundles/conv_lora_demo.json")]
    for key, value in overrides.items():
        args += [f"--{key}", value]
    return args


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


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
    assert 1 <= saved_epoch < 3 and not (out / "adapter_final.pt").exists()

    resumed = subprocess.run(_command(out, data), capture_output=True, text=True, env=_env(), cwd=REPO, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"resumed from {resume_file} at epoch {saved_epoch}" in log
    assert f"epoch {saved_epoch}/3" not in log  # finished epochs are not trained again
    assert _final_metric(log) == _final_metric(straight.stdout + straight.stderr)
    a = torch.load(tmp_path / "straight" / "adapter_final.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "adapter_final.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

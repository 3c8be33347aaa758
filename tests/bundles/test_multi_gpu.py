"""configs/multi_gpu_train.json under a real `torchrun --nproc_per_node 2` (gloo, CPU) on real Colin27/AAL slices."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist
from PIL import Image

from medsam_peft import load_tuned_sam
from medsam_peft.engines import AutocastInferer
from medsam_peft.tuners import read_adapter
from medsam_peft.transforms import ResizeLongestSide

REPO = Path(__file__).resolve().parents[2]
DEMO, MULTI = "bundles/conv_lora_demo.json", "configs/multi_gpu_train.json"
# Conv-LoRA without gate noise (the ranks' noise streams differ from one process's), without box jitter and in float32
# (precision "auto" is bf16 on CPUs with native bf16, whose rounding depends on the batch's shape): the only
# difference left between 2 x batch 2 and 1 x batch 4 is the order of floating-point sums.
EXACT = {"tuner_options": "{'r': 3, 'alpha': 32, 'num_experts': 8, 'noisy_gating': False}", "train_box_jitter": "0",
         "precision": "float32"}
# Stated tolerance of (a): every trainable tensor within 1e-5 of the one-process tensor relative to its largest
# entry (fp32 sums in another order; one AdamW step moves a weight by about lr = 1e-3).
STEP_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def slices(tmp_path_factory) -> Path:
    """Real Colin27/AAL slices; the datalist keeps 4 training samples (one step of 2 x 2 or 1 x 4) and 5 validation
    samples (uneven shards of 3 + 2: a duplicated sample would change the gathered mean)."""
    from medsam_peft.data import prepare_colin27_aal
    from tests.conftest import COLIN27_DIR

    root = tmp_path_factory.mktemp("multi_gpu_colin27")
    prepare_colin27_aal(root, source=COLIN27_DIR, slice_step=12)
    datalist = json.loads((root / "datalist.json").read_text())
    datalist["training"], datalist["validation"] = datalist["training"][:4], datalist["validation"][:5]
    (root / "datalist.json").write_text(json.dumps(datalist))
    return root


def _args(configs: list[str], data: Path, out: Path, **extra: str) -> list[str]:
    overrides = {"bundle_root": str(REPO), "dataset_dir": str(data), "output_dir": str(out), "backbone": "vit_tiny",
                 "checkpoint": "", "image_size": "128", "num_workers": "0", "learning_rate": "0.001", "overlays": "2",
                 "experiment_name": "ddp", **extra}
    args = ["-m", "monai.bundle", "run", "--config_file", str([str(REPO / c) for c in configs])]
    for key, value in overrides.items():
        args += [f"--{key}", value]
    return args


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"  # two ranks on a small CPU: no oversubscription
    return env


def _torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def runs(slices, tmp_path_factory):
    """One epoch of the demo bundle: 2 processes x batch 2 under torchrun, and 1 process x batch 4."""
    root = tmp_path_factory.mktemp("ddp")
    two = _run(_torchrun(2) + _args([DEMO, MULTI], slices, root / "two", batch_size="2", max_epochs="1", **EXACT))
    one = _run([sys.executable] + _args([DEMO], slices, root / "one", batch_size="4", max_epochs="1", **EXACT))
    return root, two, one


def test_one_step_on_two_processes_equals_one_process_with_the_double_batch(runs) -> None:
    root, _, _ = runs
    two = read_adapter(root / "two" / "adapter_final.safetensors")["state_dict"]
    one = read_adapter(root / "one" / "adapter_final.safetensors")["state_dict"]
    assert set(two) == set(one)
    for name in one:
        scale = one[name].abs().max().clamp_min(1e-12)
        assert float((two[name] - one[name]).abs().max() / scale) < STEP_TOLERANCE, name
    # the step really trained: LoRA's B factors start at zero, the experts' convolutions are reached
    assert all(one[n].abs().max() > 0 for n in one if n.endswith("conv_lora_B"))
    assert any("conv_lora_experts" in n for n in one)


def test_sharded_validation_equals_a_single_process_evaluation(runs, slices) -> None:
    """The 2-process run's val_mean_dice (5 samples sharded 3 + 2, gathered) = Dice of its adapter, recomputed."""
    root, two_log, one_log = runs
    zero_shot = [float(re.search(r"val_mean_dice zero-shot \(before tuning\): ([\d.]+)", log).group(1))
                 for log in (two_log, one_log)]
    assert zero_shot[0] == zero_shot[1]  # the same frozen start on every rank, every sample scored once
    reported = float(re.search(r"tuned ([\d.]+)", (root / "two" / "metric_report.txt").read_text()).group(1))
    torch.manual_seed(0)
    model = load_tuned_sam(root / "two" / "adapter_final.safetensors").eval()
    resize, resize_mask = ResizeLongestSide(128, "bilinear"), ResizeLongestSide(128, "nearest-exact")
    dices = []
    for item in load_decathlon_datalist(slices / "datalist.json", data_list_key="validation", base_dir=slices):
        image = torch.as_tensor(np.asarray(Image.open(item["image"]), dtype=np.float32) / 255.0)[None].expand(3, -1, -1)
        mask = resize_mask(torch.as_tensor(np.asarray(Image.open(item["label"])) > 127, dtype=torch.float32)[None])[0]
        ys, xs = np.nonzero(mask.numpy())
        box = torch.tensor([[xs.min(), ys.min(), xs.max(), ys.max()]], dtype=torch.float32)
        with torch.no_grad():  # in the run's precision (EXACT: float32)
            pred = (torch.sigmoid(AutocastInferer("float32")(resize(image)[None], model, boxes=box)[0, 0]) > 0.5).numpy()
        truth = mask.numpy() > 0.5
        dices.append(2 * np.logical_and(pred, truth).sum() / (pred.sum() + truth.sum()))
    assert len(dices) == 5
    assert float(np.mean(dices)) == pytest.approx(reported, abs=1e-4)


def test_rank_zero_alone_writes_files_and_mlflow(runs) -> None:
    root, two_log, _ = runs
    listing = {d: sorted(str(p.relative_to(root / d)) for p in (root / d).rglob("*") if "mlruns" not in p.parts)
               for d in ("two", "one")}
    assert listing["two"] == listing["one"]  # one set of files, no per-rank copies
    assert "overlays/overlay_01.png" in listing["two"]  # rank 0 draws the first images of its shard
    assert two_log.count("val_mean_dice: zero-shot") == 1 and two_log.count("trainable 40,572") == 1
    client = mlflow.MlflowClient(f"sqlite:///{root / 'two' / 'mlruns.db'}")
    found = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(found) == 1 and found[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(found[0].info.run_id, "val_mean_dice")] == [0, 1]
    assert found[0].data.params["batch_size"] == "2"


def _rank_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """The worker processes torchrun started, by their RANK."""
    pids = {}
    for child in Path("/proc").iterdir():
        if not child.name.isdigit():
            continue
        try:
            stat = (child / "stat").read_text()
            environ = (child / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != launcher.pid:
            continue
        for entry in environ:
            if entry.startswith(b"RANK="):
                pids[int(entry[5:])] = int(child.name)
    return pids


def test_a_killed_rank_stops_the_job_and_the_rerun_resumes_on_another_world_size(tmp_path) -> None:
    """SIGKILL rank 1 after epoch 1's checkpoint: torchrun stops the job with an error; the rerun (on 1 process:
    the N -> M rule) continues from epoch 1 with the iteration count rescaled and finishes the same MLflow run."""
    out = tmp_path / "run"
    data = tmp_path / "data"
    from medsam_peft.data import prepare_colin27_aal
    from tests.conftest import COLIN27_DIR

    prepare_colin27_aal(data, source=COLIN27_DIR, slice_step=12)  # 14 training samples: 7 steps per rank and epoch
    args = _args([DEMO, MULTI], data, out, batch_size="1", max_epochs="3")
    launcher = subprocess.Popen(_torchrun(2) + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=_env(), cwd=REPO)
    resume = out / "checkpoints" / "resume.pt"
    deadline = time.monotonic() + 600
    while not resume.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert resume.exists(), launcher.communicate()[0][-3000:]
    pids = _rank_pids(launcher)
    assert set(pids) == {0, 1}
    os.kill(pids[1], signal.SIGKILL)  # mid-epoch 2
    log, _ = launcher.communicate(timeout=120)
    assert launcher.returncode != 0, log[-2000:]
    assert not list(out.rglob("*.tmp"))
    state = torch.load(resume, weights_only=True)
    assert state["world_size"] == 2 and state["epoch"] >= 1

    epoch, iteration = state["epoch"], state["iteration"]
    assert iteration == epoch * 7  # 14 samples / 2 ranks / batch 1
    rerun = _run([sys.executable] + _args([DEMO], data, out, batch_size="1", max_epochs="3"))
    assert f"was written by a run on 2 process(es); continuing on 1 from epoch {epoch} (iteration {iteration} -> " \
           f"{epoch * 14})" in rerun
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlruns.db'}")
    found = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(found) == 1 and found[0].info.status == "FINISHED"  # the killed job's run, continued
    history = [(m.step, m.value) for m in client.get_metric_history(found[0].info.run_id, "val_mean_dice")]
    assert sorted({step for step, _ in history}) == [0, 1, 2, 3]
    # the resumed start re-validates epoch 1's adapter on one process: the value the 2 ranks gathered, again
    again = [value for step, value in history if step == epoch]
    assert len(again) == 2 and again[0] == pytest.approx(again[1], abs=1e-6)


def test_torchrun_without_the_multi_gpu_layer_is_refused(slices, tmp_path) -> None:
    done = subprocess.run(_torchrun(2) + _args([DEMO], slices, tmp_path / "run", max_epochs="1"), capture_output=True,
                          text=True, env=_env(), cwd=REPO, timeout=300)
    assert done.returncode != 0
    assert "started by torchrun with 2 processes but without configs/multi_gpu_train.json" in done.stdout + done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()

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
from medsam_peft.engines import AutocastInferer
from medsam_peft.transforms import ResizeLongestSide, RestoreOriginalSize
from tests.bundle_runner import run_bundle as _run_bundle

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
    assert (out / "run" / "checkpoints" / "adapter_best.safetensors").is_file()


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
    assert json.loads(runs.loc[0, "params.tuner_options"]) == {"r": 3, "alpha": 32, "num_experts": 8}
    assert runs.loc[0, "params.mask_tokens"] == "None" and runs.loc[0, "params.num_classes"] == "None"  # SAM's decoder
    artifacts = {a.path for a in client.list_artifacts(runs.loc[0, "run_id"])}
    assert {"parameter_report.json", "adapter_best.safetensors", "overlay_00.png"} <= artifacts


def test_final_adapter_reproduces_the_reported_dice_independently(demo_run) -> None:
    """Reload adapter_final.safetensors, predict the validation slices ourselves and compute Dice with NumPy."""
    out, _ = demo_run
    torch.manual_seed(0)
    model = load_tuned_sam(out / "run" / "adapter_final.safetensors").eval()
    resize, resize_mask = ResizeLongestSide(128, "bilinear"), ResizeLongestSide(128, "nearest-exact")
    dices = []
    for item in load_decathlon_datalist(out / "data" / "datalist.json", data_list_key="validation", base_dir=out / "data"):
        image = torch.as_tensor(np.asarray(Image.open(item["image"]), dtype=np.float32) / 255.0)[None].expand(3, -1, -1)
        mask = resize_mask(torch.as_tensor(np.asarray(Image.open(item["label"])) > 127, dtype=torch.float32)[None])[0]
        ys, xs = np.nonzero(mask.numpy())
        box = torch.tensor([[xs.min(), ys.min(), xs.max(), ys.max()]], dtype=torch.float32)
        with torch.no_grad():  # in the run's precision (the default "auto": bf16 only where the CPU runs it natively)
            logits = AutocastInferer("auto")(resize(image)[None], model, boxes=box)
        pred = (torch.sigmoid(logits[0, 0]) > 0.5).numpy()
        truth = mask.numpy() > 0.5
        dices.append(2 * np.logical_and(pred, truth).sum() / (pred.sum() + truth.sum()))
    tuned = float(re.search(r"tuned ([\d.]+)", (out / "run" / "metric_report.txt").read_text()).group(1))
    assert float(np.mean(dices)) == pytest.approx(tuned, abs=2e-3)


def _tiny(out) -> dict[str, str]:
    return {"bundle_root": str(REPO), "dataset_dir": str(out / "data"), "output_dir": str(out / "run"),
            "backbone": "vit_tiny", "checkpoint": "", "image_size": "128", "experiment_name": "demo_test"}


def test_evaluate_scores_written_predictions_at_original_size(demo_run) -> None:
    """configs/evaluate.json after the training bundle: metrics.json equals Dice/IoU recomputed from the PNGs."""
    out, _ = demo_run
    log = _run_bundle(["bundles/conv_lora_demo.json", "configs/evaluate.json"], _tiny(out))
    metrics = json.loads((out / "run" / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "validation" and f"val_mean_dice {metrics['metrics']['val_mean_dice']:.4f}" in log
    dices, ious = [], []
    for item in load_decathlon_datalist(out / "data" / "datalist.json", data_list_key="validation", base_dir=out / "data"):
        truth = np.asarray(Image.open(item["label"])) > 127
        stem = Path(item["label"]).name.split(".")[0]
        pred = np.asarray(Image.open(out / "run" / "eval" / "predictions" / f"{stem}_pred.png")) > 127
        assert pred.shape == truth.shape  # restored to the original image size
        inter = np.logical_and(pred, truth).sum()
        dices.append(2 * inter / (pred.sum() + truth.sum()))
        ious.append(inter / np.logical_or(pred, truth).sum())
    assert len(dices) > 0 and np.isfinite(metrics["metrics"]["val_mean_dice"])
    assert metrics["metrics"]["val_mean_dice"] == pytest.approx(float(np.mean(dices)), abs=1e-4)
    assert metrics["metrics"]["val_mean_iou"] == pytest.approx(float(np.mean(ious)), abs=1e-4)


def test_inference_writes_masks_from_boxes_in_image_pixels(demo_run, tmp_path) -> None:
    out, _ = demo_run
    items = load_decathlon_datalist(out / "data" / "datalist.json", data_list_key="validation", base_dir=out / "data")[:3]
    requests = []
    for i, item in enumerate(items):  # several structures can share an image: name each request's output
        ys, xs = np.nonzero(np.asarray(Image.open(item["label"])) > 127)
        requests.append({"image": item["image"], "box": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())],
                         "name": f"request{i}"})
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    log = _run_bundle(["bundles/conv_lora_demo.json", "configs/inference.json"],
                      {**_tiny(out), "infer_datalist": str(tmp_path / "requests.json"), "infer_dir": str(tmp_path / "masks"),
                       "precision": "float32"})  # fp32: the random tiny model sits near 0.5 on many pixels
    assert f"masks written to {tmp_path / 'masks'}" in log
    model = load_tuned_sam(out / "run" / "checkpoints" / "adapter_best.safetensors").eval()
    for request in requests:
        image = np.asarray(Image.open(request["image"]), dtype=np.float32) / 255.0
        h, w = image.shape
        scale = 128 / max(h, w)
        resized = ResizeLongestSide(128, "bilinear")(torch.as_tensor(image)[None].expand(3, -1, -1))
        box = torch.tensor([request["box"]], dtype=torch.float32) * torch.tensor(
            [round(w * scale) / w, round(h * scale) / h] * 2)
        with torch.no_grad():
            prob = torch.sigmoid(model(resized[None], boxes=box))[0]
        expected = RestoreOriginalSize(128, "bilinear")(prob, (h, w))[0].numpy() > 0.5
        written = np.asarray(Image.open(tmp_path / "masks" / f"{request['name']}_pred.png")) > 127
        assert (written != expected).mean() < 1e-4


def test_export_bundle_is_valid_and_runs_anywhere(demo_run, tmp_path) -> None:
    """The exported bundle is model-zoo complete: metadata with the run's evaluation, MONAI's own verify_metadata,
    verify_net_in_out and ckpt_export pass on it, and the TorchScript it writes answers as the eager model does."""
    from medsam_peft.cli import main as cli_main
    from medsam_peft.tuners import read_adapter

    out, _ = demo_run
    if not (out / "run" / "eval" / "metrics.json").is_file():  # the evaluation test runs first in file order
        _run_bundle(["bundles/conv_lora_demo.json", "configs/evaluate.json"], _tiny(out))
    bundle = tmp_path / "exported"
    assert cli_main(["export-bundle", str(out / "run"), str(bundle), "--label", "thalamus"]) == 0
    assert {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} == {
        "configs/metadata.json", "configs/inference.json", "configs/evaluate.json", "configs/train.json",
        "models/model.safetensors",
        "models/model.pt", "docs/README.md", "docs/metrics.json", "LICENSE"}  # random-init base: no large_files.yml
    best = read_adapter(out / "run" / "checkpoints" / "adapter_best.safetensors")
    exported = read_adapter(bundle / "models" / "model.safetensors")
    assert exported["metadata"] == best["metadata"] and exported["metadata"]["validation"]["epoch"] == 1
    assert all(torch.equal(exported["state_dict"][k], v) for k, v in best["state_dict"].items())
    plain = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert plain.keys() == {f"model.{k}" for k in best["state_dict"]}
    run_metrics = json.loads((out / "run" / "eval" / "metrics.json").read_text())["metrics"]
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["eval_metrics"] == run_metrics == json.loads((bundle / "docs" / "metrics.json").read_text())["metrics"]
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "thalamus"}
    assert meta["data_type"] == "nibabel" and meta["network_data_format"]["inputs"]["image"]["modality"] == "MR (T1)"
    assert meta["pytorch_version"] == torch.__version__.split("+")[0] and meta["numpy_version"] == np.__version__
    docs = (bundle / "docs" / "README.md").read_text()
    assert f"| val_mean_dice | {run_metrics['val_mean_dice']:.4f} |" in docs and "colin27_aal" in docs
    assert json.loads((bundle / "configs" / "train.json").read_text())["max_epochs"] == 1

    def monai_bundle(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "monai.bundle", *args], capture_output=True, text=True,
                              cwd=bundle, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout + done.stderr

    schema = str(REPO / "tests" / "data" / "meta_schema_20240725.json")
    assert "metadata is verified with no error" in monai_bundle("verify_metadata", "--meta_file",
                                                                "configs/metadata.json", "--filepath", schema)
    assert "verified with no error" in monai_bundle("verify_net_in_out", "network_def", "--meta_file",
                                                    "configs/metadata.json", "--config_file", "configs/inference.json")
    # model-zoo's export: the adapter-only models/model.pt loads strictly into network_def; SAM is traced
    monai_bundle("ckpt_export", "network_def", "--filepath", "models/model.ts", "--ckpt_file", "models/model.pt",
                 "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json",
                 "--use_trace", "True", "--input_shape", "[1, 3, 128, 128]")
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"))
    traced_state = scripted.state_dict()
    assert all(torch.equal(traced_state[k], v) for k, v in plain.items())  # the adapter went into the export
    eager = load_tuned_sam(bundle / "models" / "model.safetensors").eval()
    # this tiny demo's base is random (checkpoint ""), drawn anew in each process: give the eager model the export's
    eager.load_state_dict({k: v for k, v in traced_state.items() if k in eager.state_dict()})
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(scripted(image), eager(image), atol=1e-4)
    # run the exported inference from an unrelated folder: nothing outside the bundle is needed
    item = load_decathlon_datalist(out / "data" / "datalist.json", data_list_key="validation", base_dir=out / "data")[0]
    ys, xs = np.nonzero(np.asarray(Image.open(item["label"])) > 127)
    box = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
    (tmp_path / "requests.json").write_text(json.dumps([{"image": item["image"], "box": box, "name": "q"}]))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                           "--bundle_root", ".", "--datalist", str(tmp_path / "requests.json"), "--output_dir",
                           str(tmp_path / "masks"), "--precision", "float32"],
                          capture_output=True, text=True, cwd=bundle, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # the bundle's own evaluation on the run's validation split reproduces the run's metrics.json
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/evaluate.json",
                           "--bundle_root", ".", "--datalist", str(out / "data" / "datalist.json"), "--output_dir",
                           str(tmp_path / "bundle_eval")], capture_output=True, text=True, cwd=bundle, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reproduced = json.loads((tmp_path / "bundle_eval" / "metrics.json").read_text())["metrics"]
    assert reproduced.keys() == run_metrics.keys()
    for key, value in run_metrics.items():
        assert reproduced[key] == pytest.approx(value, abs=1e-4), key
    truth = np.asarray(Image.open(item["label"])) > 127
    mask = np.asarray(Image.open(tmp_path / "masks" / "q_pred.png")) > 127
    torch.manual_seed(0)  # the random tiny base as the inference run draws it (set_determinism(seed=0) first)
    model = load_tuned_sam(bundle / "models" / "model.safetensors").eval()
    image = np.asarray(Image.open(item["image"]), dtype=np.float32) / 255.0
    h, w = image.shape
    scale = 128 / max(h, w)
    resized = ResizeLongestSide(128, "bilinear")(torch.as_tensor(image)[None].expand(3, -1, -1))
    scaled = torch.tensor([box], dtype=torch.float32) * torch.tensor([round(w * scale) / w, round(h * scale) / h] * 2)
    with torch.no_grad():
        expected = RestoreOriginalSize(128, "bilinear")(torch.sigmoid(model(resized[None], boxes=scaled))[0], (h, w))
    assert mask.shape == truth.shape and (mask != (expected[0].numpy() > 0.5)).mean() < 1e-4


def test_the_same_pictures_in_16_bit_score_the_same_dice(demo_run, tmp_path) -> None:
    """Regression: 16-bit PNGs went through a fixed 0..255 window (76 % of the pixels became 1.0) and trained on
    garbage without a word. configs/evaluate.json on a copy of the validation images stored as 16-bit (x 257, the
    same picture) scores exactly what it scores on the 8-bit originals."""
    import shutil

    out, _ = demo_run
    data16 = tmp_path / "data16"
    shutil.copytree(out / "data", data16)
    for path in (data16 / "images").glob("*.png"):
        pixels = np.asarray(Image.open(path))
        assert pixels.dtype == np.uint8
        Image.fromarray(pixels.astype(np.uint16) * 257).save(path)  # 0..255 -> 0..65535
        reread = np.asarray(Image.open(path))
        assert reread.max() > 255 and np.array_equal(reread // 257, pixels)
    runs = {}
    for name, data in (("8bit", out / "data"), ("16bit", data16)):
        _run_bundle(["bundles/conv_lora_demo.json", "configs/evaluate.json"],
                    {**_tiny(out), "dataset_dir": str(data), "eval_dir": str(tmp_path / name)})
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())["metrics"]
    assert runs["8bit"]["val_mean_dice"] > 0
    for key, value in runs["8bit"].items():
        assert runs["16bit"][key] == pytest.approx(value, abs=1e-6), key


def _evaluation_boxes_in_image_pixels(item: dict, image_size: int) -> list[float]:
    """The box configs/evaluate.json prompts ``item`` with (from the resized mask, no jitter, in the model's frame),
    mapped back to the image's pixels: ``predict --boxes`` scales it to the model's frame again."""
    from medsam_peft.transforms import RandBoxFromMaskd, ScaleBox, sam_preprocessing

    sample = {"image": item["image"], "label": item["label"]}
    for transform in sam_preprocessing(image_size):
        sample = transform(sample)
    box = RandBoxFromMaskd("label", "box", max_jitter=0)(sample)["box"]
    h, w = np.asarray(Image.open(item["image"])).shape[:2]
    sx, sy = ScaleBox(image_size).scale_factors((h, w))
    return [float(box[0]) / sx, float(box[1]) / sy, float(box[2]) / sx, float(box[3]) / sy]


def test_predict_on_a_folder_of_slices_scores_the_evaluations_dice(demo_run, tmp_path) -> None:
    """`medsam-peft predict` on a folder of the real validation slices, prompted with the evaluation's boxes: its
    masks are the evaluation's masks and score the evaluation's Dice (metrics.json)."""
    import shutil

    from medsam_peft.cli import main as cli_main

    out, _ = demo_run
    if not (out / "run" / "eval" / "metrics.json").is_file():
        _run_bundle(["bundles/conv_lora_demo.json", "configs/evaluate.json"], _tiny(out))
    items = load_decathlon_datalist(out / "data" / "datalist.json", data_list_key="validation", base_dir=out / "data")
    folder, boxes = tmp_path / "slices", {}
    folder.mkdir()
    for item in items:  # one input per (slice, structure): several structures share a slice image
        name = Path(item["label"]).name
        shutil.copy(item["image"], folder / name)
        boxes[name] = _evaluation_boxes_in_image_pixels(item, 128)
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    torch.manual_seed(0)  # the random tiny base as the evaluation process drew it (set_determinism(seed=0))
    assert cli_main(["predict", "--adapter", str(out / "run"), "--input", str(folder), "--boxes",
                     str(tmp_path / "boxes.json"), "--output", str(tmp_path / "masks"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "masks" / "predictions.json").read_text())
    assert summary["adapter"].endswith("adapter_best.safetensors") and len(summary["predictions"]) == len(items)
    dices = []
    for item in items:
        stem = Path(item["label"]).name.split(".")[0]
        pred = np.asarray(Image.open(tmp_path / "masks" / f"{stem}_pred.png")) > 127
        evaluated = np.asarray(Image.open(out / "run" / "eval" / "predictions" / f"{stem}_pred.png")) > 127
        truth = np.asarray(Image.open(item["label"])) > 127
        assert pred.shape == truth.shape and (pred != evaluated).mean() < 1e-3, stem
        dices.append(2 * np.logical_and(pred, truth).sum() / (pred.sum() + truth.sum()))
    evaluation = json.loads((out / "run" / "eval" / "metrics.json").read_text())["metrics"]["val_mean_dice"]
    assert float(np.mean(dices)) == pytest.approx(evaluation, abs=1e-3)


def test_predict_segments_a_volume_over_the_roi_slices(demo_run, tmp_path, capsys) -> None:
    """A NIfTI volume with a 3D Slicer ROI: a NIfTI mask on the input's grid, foreground only inside the ROI's
    slices, each slice the mask the 2-D path gives that slice."""
    import nibabel as nib

    from medsam_peft.cli import main as cli_main
    from medsam_peft.data.volumes import slice_to_image, to_uint8
    from medsam_peft.label.predictor import BundlePredictor, Prompts

    out, _ = demo_run
    rng = np.random.default_rng(0)
    volume = np.zeros((40, 48, 6), np.float32)
    volume[10:30, 12:36, :] = 200 + rng.normal(0, 5, (20, 24, 6))
    affine = np.diag([0.9, 0.9, 2.0, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), str(tmp_path / "blob.nii.gz"))
    (tmp_path / "boxes.json").write_text(json.dumps({"blob.nii.gz": [8, 32, 10, 38, 2, 3]}))
    torch.manual_seed(0)  # in this process: the random tiny base drawn again below
    assert cli_main(["predict", "--adapter", str(out / "run"), "--input", str(tmp_path / "blob.nii.gz"), "--boxes",
                     str(tmp_path / "boxes.json"), "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr()
    assert "wrote 1 masks to" in printed.out and "predict: 100%" in printed.err  # the progress bar
    written = nib.load(str(tmp_path / "out" / "blob_pred.nii.gz"))
    mask = np.asarray(written.dataobj)
    assert mask.shape == volume.shape and np.allclose(written.affine, affine)
    assert not mask[:, :, [0, 1, 4, 5]].any()  # propagation stays within the roi's k range 2..3
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"][0]
    assert summary["foreground"] == int(mask.sum()) and summary["shape"] == [40, 48, 6]
    torch.manual_seed(0)
    predictor = BundlePredictor.from_run(out / "run", out / "run" / "checkpoints" / "adapter_best.safetensors")
    scaled = to_uint8(volume).astype(np.float32) / 255.0
    for k in (2, 3):  # the roi [i0, i1, j0, j1] as the image box: columns = i, rows = (J - 1) - j
        expected, _ = predictor.predict_image(slice_to_image(scaled[:, :, k]), Prompts([8, 47 - 38, 32, 47 - 10], [], []))
        assert (slice_to_image(mask[:, :, k]) != expected).mean() < 1e-3


@pytest.mark.parametrize(("args", "fragments"), [
    (["--prompt-free"], ["trained with box prompts", "give --boxes"]),
    ([], ["trained with box prompts", "give --boxes FILE"]),
    (["--boxes", "{missing}"], ["--boxes", "does not exist"]),
    (["--boxes", "{notjson}"], ["is not valid JSON"]),
    (["--boxes", "{other}"], ["names ['other.png'], not among the inputs"]),
    (["--boxes", "{badbox}"], ["roi [5, 5, 2, 2] has zero or negative area"]),
])
def test_predict_refuses_bad_prompts_in_one_line(demo_run, tmp_path, capsys, args, fragments) -> None:
    """Each refusal comes before the model loads: one `error:` line and exit code 1 or 2 (the first case runs as a
    real process, the rest through the same main() in this one)."""
    from medsam_peft.cli import main as cli_main

    out, _ = demo_run
    item = load_decathlon_datalist(out / "data" / "datalist.json", data_list_key="validation", base_dir=out / "data")[0]
    files = {"missing": tmp_path / "nothing.json", "notjson": tmp_path / "bad.json", "other": tmp_path / "other.json",
             "badbox": tmp_path / "badbox.json"}
    files["notjson"].write_text("{slice.png: [1, 2")
    files["other"].write_text(json.dumps({"other.png": [1, 2, 3, 4]}))
    files["badbox"].write_text(json.dumps({"slice.png": [5, 5, 2, 2]}))
    (tmp_path / "in").mkdir()
    Image.open(item["image"]).save(tmp_path / "in" / "slice.png")
    argv = ["predict", "--adapter", str(out / "run"), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
            *(a.format(**files) for a in args)]
    if args == ["--prompt-free"]:
        done = subprocess.run([sys.executable, "-m", "medsam_peft.cli", *argv], capture_output=True, text=True,
                              cwd=REPO, timeout=300)
        code, err = done.returncode, done.stderr
    else:
        code, err = cli_main(argv), capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code in (1, 2) and "Traceback" not in err and len(lines) == 1, err[-2000:]
    assert all(f in lines[0] for f in fragments), lines[0]


def test_log_model_registers_a_pyfunc_that_predicts_the_evaluations_masks(demo_run, capsys, monkeypatch) -> None:
    """`medsam-peft log-model RUN --register NAME`: a pyfunc in the training run's MLflow run, loaded back from the
    registry, answers a path row (inside the allowed folder) and a base64 row with the masks configs/evaluate.json
    wrote; a path outside the allowed folders is not read."""
    import base64

    from medsam_peft.cli import main as cli_main
    from medsam_peft.mlflow_model import decode_mask

    out, _ = demo_run
    if not (out / "run" / "eval" / "metrics.json").is_file():
        _run_bundle(["bundles/conv_lora_demo.json", "configs/evaluate.json"], _tiny(out))
    assert cli_main(["log-model", str(out / "run"), "--register", "demo_conv_lora"]) == 0
    assert "registered as 'demo_conv_lora' version 1" in capsys.readouterr().out
    mlflow.set_tracking_uri("sqlite:///" + str(out / "run" / "mlruns.db"))
    training_run = mlflow.search_runs(experiment_names=["demo_test"]).loc[0, "run_id"]
    version = mlflow.MlflowClient().get_model_version("demo_conv_lora", "1")
    assert version.run_id == training_run  # logged into the training run, not a new one
    torch.manual_seed(0)  # the random tiny base as the evaluation process drew it
    model = mlflow.pyfunc.load_model("models:/demo_conv_lora/1")
    items = load_decathlon_datalist(out / "data" / "datalist.json", data_list_key="validation", base_dir=out / "data")[:2]
    rows = [{"image": items[0]["image"], "box": _evaluation_boxes_in_image_pixels(items[0], 128)},
            {"image": base64.b64encode(Path(items[1]["image"]).read_bytes()).decode(),
             "box": _evaluation_boxes_in_image_pixels(items[1], 128)}]
    import pandas as pd

    from medsam_peft.errors import DataError
    from medsam_peft.mlflow_model import IMAGE_DIRS_ENV

    with pytest.raises(DataError, match="paths are read only inside the folders"):  # no folder allowed: no path read
        model.predict(pd.DataFrame(rows[:1]))
    monkeypatch.setenv(IMAGE_DIRS_ENV, str(out / "data" / "images"))
    with pytest.raises(DataError, match="paths are read only inside"):  # outside the allowed folder
        model.predict(pd.DataFrame([{**rows[0], "image": str(out / "run" / "run_config.json")}]))
    answer = model.predict(pd.DataFrame(rows))
    for item, (_, row) in zip(items, answer.iterrows()):
        mask = decode_mask(row["mask"])
        stem = Path(item["label"]).name.split(".")[0]
        evaluated = np.asarray(Image.open(out / "run" / "eval" / "predictions" / f"{stem}_pred.png")) > 127
        assert mask.shape == evaluated.shape and (mask != evaluated).mean() < 1e-3 and row["pixels"] == mask.sum()


def test_push_and_pull_through_a_file_mirror_and_a_local_hub(demo_run, tmp_path, capsys, monkeypatch) -> None:
    """`medsam-peft push RUN OWNER/NAME` then `pull`: through a file:// mirror and through huggingface_hub against a
    Hub look-alike on 127.0.0.1. The pulled folder is a bundle: card, config.json, the adapter byte for byte, and
    `predict` on it gives the evaluation's mask. A download whose adapter bytes changed is refused."""
    import yaml

    from medsam_peft.cli import main as cli_main
    from tests.hub_server import start_hub

    out, _ = demo_run
    if not (out / "run" / "eval" / "metrics.json").is_file():
        _run_bundle(["bundles/conv_lora_demo.json", "configs/evaluate.json"], _tiny(out))
    from medsam_peft.tuners import read_adapter

    best = read_adapter(out / "run" / "checkpoints" / "adapter_best.safetensors")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    assert cli_main(["push", str(out / "run"), "lab/demo", "--hub", mirror.as_uri(), "--label", "thalamus"]) == 0
    assert cli_main(["push", str(out / "run"), "lab/demo", "--hub", mirror.as_uri()]) == 0  # a new version replaces it
    assert sorted(p.name for p in (mirror / "lab").iterdir()) == ["demo"]  # no staging folders left
    assert cli_main(["pull", "lab/demo", str(tmp_path / "from_mirror"), "--hub", mirror.as_uri()]) == 0
    mirrored = read_adapter(tmp_path / "from_mirror" / "models" / "model.safetensors")
    assert mirrored["metadata"] == best["metadata"]
    assert mirrored["state_dict"].keys() == best["state_dict"].keys()
    assert all(torch.equal(mirrored["state_dict"][k], v) for k, v in best["state_dict"].items())
    card = (tmp_path / "from_mirror" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "medsam_peft" and "conv_lora" in front["tags"] and "val_mean_dice" in front["metrics"]
    config = json.loads((tmp_path / "from_mirror" / "config.json").read_text())
    assert config["backbone"] == "vit_tiny" and config["image_size"] == 128 and config["prompt"] == "box"

    server, hub, url = start_hub()
    try:
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # huggingface_hub's own cache stays in the test
        assert cli_main(["push", str(out / "run"), "lab/demo", "--hub", url, "--token", "hf_test"]) == 0
        assert hub.requests[:4] == ["POST /api/repos/create", "POST /api/validate-yaml",
                                    "POST /api/models/lab/demo/preupload/main", "POST /api/models/lab/demo/commit/main"]
        assert hub.cards[0].startswith("---\nlibrary_name: medsam_peft\n")  # the card the Hub validated
        assert cli_main(["pull", "lab/demo", str(tmp_path / "from_hub"), "--hub", url]) == 0
        assert "adapter checksum verified" in capsys.readouterr().out
        pulled = tmp_path / "from_hub"
        from_hub = read_adapter(pulled / "models" / "model.safetensors")
        assert from_hub["metadata"] == best["metadata"]
        assert all(torch.equal(from_hub["state_dict"][k], v) for k, v in best["state_dict"].items())
        # the pulled repository serves as it is: predict on one validation slice with the evaluation's box
        item = load_decathlon_datalist(out / "data" / "datalist.json", data_list_key="validation",
                                       base_dir=out / "data")[0]
        name = Path(item["label"]).name
        (tmp_path / "one").mkdir()
        Image.open(item["image"]).save(tmp_path / "one" / name)
        (tmp_path / "boxes.json").write_text(json.dumps({name: _evaluation_boxes_in_image_pixels(item, 128)}))
        torch.manual_seed(0)
        assert cli_main(["predict", "--adapter", str(pulled), "--input", str(tmp_path / "one"), "--boxes",
                         str(tmp_path / "boxes.json"), "--output", str(tmp_path / "masks"), "--quiet"]) == 0
        stem = name.split(".")[0]
        pred = np.asarray(Image.open(tmp_path / "masks" / f"{stem}_pred.png")) > 127
        evaluated = np.asarray(Image.open(out / "run" / "eval" / "predictions" / f"{stem}_pred.png")) > 127
        assert (pred != evaluated).mean() < 1e-3
        # a damaged copy on the server: one byte of the tensors changed (same size, same header)
        sha, files = hub.head("lab/demo")
        damaged = bytearray(files["models/model.safetensors"])
        damaged[-5] ^= 0x01
        hub.repos["lab/demo"].append(("f" * 40, {**files, "models/model.safetensors": bytes(damaged)}))
        capsys.readouterr()
        assert cli_main(["pull", "lab/demo", str(tmp_path / "damaged"), "--hub", url]) == 1
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "model.safetensors is corrupt" in err
    finally:
        server.shutdown()
    assert cli_main(["pull", "../etc", str(tmp_path / "x"), "--hub", mirror.as_uri()]) == 2
    assert cli_main(["pull", "lab/demo", str(tmp_path / "from_mirror"), "--hub", mirror.as_uri()]) == 2  # not empty

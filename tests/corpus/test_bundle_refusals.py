"""`python -m monai.bundle run` on the demo bundle (real Colin27 slices, a tiny ViT) with bad settings, bad datalists
and bad files: each is refused before or while it would do harm, with one line naming the key or file."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.corpus.conftest import TINY, leftovers

DEMO = "bundles/conv_lora_demo.json"


def _overrides(data: Path, out: Path, **extra: str) -> dict[str, str]:
    return {"dataset_dir": str(data), "output_dir": str(out), **TINY, "experiment_name": "corpus", **extra}


# ---- settings: exit code 2, refused before anything is built ------------------------------------------------------
SETTINGS = [
    ({"learning_rate": "abc"}, ["'learning_rate'", "a number >= 0.0", "'abc'"]),
    ({"max_epochs": "0"}, ["'max_epochs'", "integer >= 1"]),
    ({"batch_size": "2.5"}, ["'batch_size'", "integer >= 1"]),
    ({"resume": "false"}, ["'resume'", "True or False", "--resume False"]),
    ({"max_epoch": "3"}, ["unknown setting --max_epoch", "did you mean --max_epochs?"]),
    # the annotator's switches: '--multimask false' was the string 'false', read as true (the run trained multimask)
    ({"multimask": "false"}, ["'multimask'", "True or False", "--multimask False"]),
    ({"box_probability": "1.5"}, ["'box_probability'", "a number in [0, 1]"]),
    ({"click_radius": "-1"}, ["'click_radius'", ">= 0.0"]),
    ({"tuner": "nosuch"}, ["'tuner'", "'conv_lora'"]),
    ({"backbone": "vit_q"}, ["'backbone'", "'vit_b'"]),
    ({"tuner_options": '{"rr": 3}'}, ["'tuner_options'", "unknown option(s) ['rr']"]),
    # another tuner on a Conv-LoRA bundle keeps the bundle's Conv-LoRA options: the line says how to drop them
    ({"tuner": "lora"}, ["'tuner_options' for tuner 'lora'", "['num_experts']", "--tuner_options '{}' for lora's"]),
    ({"precision": "fp8"}, ["'precision'", "'bfloat16'"]),
    ({"attention": "fast"}, ["'attention'", "'chunked'"]),
    ({"cpu_allocator": "fast"}, ["'cpu_allocator'", "'reuse'"]),
    ({"image_size": "100"}, ["'image_size'", "multiple of 16"]),
    ({"checkpoint": "/nowhere/sam_vit_b.pth"}, ["'checkpoint'", "/nowhere/sam_vit_b.pth is not a file"]),
    ({"weight_decay": "-1"}, ["'weight_decay'", ">= 0.0"]),
    ({"num_workers": "-2"}, ["'num_workers'", "integer >= 0"]),
    ({"train_box_jitter": "ten"}, ["'train_box_jitter'", "'ten'"]),
    ({"mask_tokens": "0"}, ["'mask_tokens'", "'reference'", "null (SAM's four tokens)"]),
    ({"num_classes": "5", "mask_tokens": "3"}, ["'mask_tokens' / 'num_classes' / 'query_init'",
                                              "mask_tokens must be null or equal num_classes (5), got 3"]),
    ({"num_classes": "5"}, ["'num_classes' = 5 makes the decoder multi-class", "DiceCELoss",
                            "bundles/conv_lora_demo_multiclass.json"]),
    ({"tuner_options": '{"mask_tokens": 1}'}, ["'tuner_options'", "mask_tokens is not a tuner option",
                                               "--mask_tokens N"]),
    # the bundle's own backbone (LiteMedSAM's TinyViT): VPT / FacT / LST / SAM-Adapter wrap ViT blocks only
    ({"tuner": "vpt", "tuner_options": "{}", "backbone": "lite_medsam", "checkpoint": "bundled", "image_size": "256"},
     ["'tuner'", "'vpt' needs a SAM ViT image encoder", "'lite_medsam' is a TinyViT", "--backbone vit_b"]),
]


@pytest.mark.parametrize(("extra", "fragments"), SETTINGS, ids=[next(iter(e)) for e, _ in SETTINGS])
def test_bad_setting_is_a_usage_error_before_anything_is_built(entry_points, colin27_data, tmp_path, extra,
                                                                fragments) -> None:
    out = tmp_path / "run"
    outcome = entry_points.bundle(DEMO, _overrides(colin27_data, out, **extra))
    outcome.refused(2, *fragments)
    assert not out.exists()  # no output folder, lock, MLflow store or report: nothing was started


# ---- datalists: exit code 1, the file and the entry named -----------------------------------------------------------
def _dataset_copy(source: Path, target: Path, datalist: object | str) -> Path:
    """A dataset folder sharing the real images (symlinks) with its own datalist.json."""
    target.mkdir(parents=True)
    for sub in ("images", "masks"):
        (target / sub).symlink_to(source / sub)
    text = datalist if isinstance(datalist, str) else json.dumps(datalist)
    (target / "datalist.json").write_text(text)
    return target


def _lists(colin27_data: Path) -> dict:
    return json.loads((colin27_data / "datalist.json").read_text())


DATALISTS = {
    "invalid_json": (lambda d: '{"training": [{"image": "images/a.png",, }]}',
                     ["is not valid JSON", "line 1, column"]),
    "not_an_object": (lambda d: "[1, 2, 3]", ["must be a JSON object", "got a list"]),
    "no_validation_list": (lambda d: {"training": d["training"]}, ["has no 'validation' list", "it has: training"]),
    "empty_training": (lambda d: {**d, "training": []}, ["the 'training' list is empty", "nothing to train on"]),
    "empty_validation": (lambda d: {**d, "validation": []}, ["the 'validation' list is empty", "no best checkpoint"]),
    "entry_without_label": (lambda d: {**d, "training": [{"image": d["training"][0]["image"]}] + d["training"][1:]},
                            ["training[0] has no 'label' key", "images/"]),
    "missing_image": (lambda d: {**d, "validation": d["validation"][:2] + [{**d["validation"][2],
                                                                           "image": "images/gone.png"}]},
                      ["validation[2]['image']", "gone.png does not exist"]),
}


@pytest.mark.parametrize("case", sorted(DATALISTS))
def test_bad_datalist_names_the_file_and_entry(entry_points, colin27_data, tmp_path, case) -> None:
    make, fragments = DATALISTS[case]
    data = _dataset_copy(colin27_data, tmp_path / "data", make(_lists(colin27_data)))
    out = tmp_path / "run"
    line = entry_points.bundle(DEMO, _overrides(data, out)).refused(1, *fragments)
    assert str(data / "datalist.json") in line
    assert not out.exists() or not [*out.rglob("*.pt"), *out.rglob("*.safetensors")]  # refused before training: no checkpoint


def test_missing_datalist_without_preparation_gives_the_prepare_command(entry_points, tmp_path) -> None:
    out = tmp_path / "run"
    outcome = entry_points.bundle(DEMO, _overrides(tmp_path / "nowhere", out, prepare_data="$None"))
    outcome.refused(1, "no prepared colin27_aal data", "medsam-peft prepare colin27_aal --root")
    assert not out.exists()


# ---- files: unreadable, mismatched, wrong values -------------------------------------------------------------------
def _with_files(colin27_data: Path, target: Path, split: str, count: int, writer) -> Path:
    """A copy of the dataset (real files) where ``count`` entries of ``split`` point at files made by ``writer``."""
    shutil.copytree(colin27_data, target)
    lists = _lists(colin27_data)
    for index, entry in enumerate(lists[split][:count]):
        writer(target, entry, index)
    (target / "datalist.json").write_text(json.dumps(lists))
    return target


def _truncate_image(root: Path, entry: dict, index: int) -> None:
    path = root / f"images/broken_{index}.png"
    path.write_bytes((root / entry["image"]).read_bytes()[:120])
    entry["image"] = str(path.relative_to(root))


def test_five_unreadable_validation_images_are_listed_in_one_error_no_abort(entry_points, colin27_data,
                                                                             tmp_path) -> None:
    """Regression: five failures during validation caching ended in SIGABRT (rc -6, 'terminate called without an
    active exception'). A real process, as users run it."""
    data = _with_files(colin27_data, tmp_path / "data", "validation", 5, _truncate_image)
    outcome = entry_points.bundle(DEMO, _overrides(data, tmp_path / "run"), real=True)
    line = outcome.refused(1, "5 of 14 validation samples cannot be loaded", "broken_0.png: unreadable or truncated",
                           "also failing:", "broken_1.png")
    assert "terminate called" not in outcome.stderr and line


@pytest.mark.parametrize("num_workers", ["0", "2"])
def test_unreadable_training_image_stops_training_naming_it(entry_points, colin27_data, tmp_path, num_workers) -> None:
    """Training samples are read while training (cache_rate 0), also in DataLoader worker processes, which re-raise
    the error as a RuntimeError holding only its text: the message still comes through alone."""
    data = _with_files(colin27_data, tmp_path / "data", "training", 1, _truncate_image)
    out = tmp_path / "run"
    outcome = entry_points.bundle(DEMO, _overrides(data, out, num_workers=num_workers))
    outcome.refused(1, "broken_0.png: unreadable or truncated image")
    assert leftovers(out) == [] and not (out / "adapter_final.safetensors").exists()


def _resized_mask(root: Path, entry: dict, index: int) -> None:
    mask = Image.open(root / entry["label"])
    path = root / f"masks/small_{index}.png"
    mask.resize((mask.width // 2, mask.height // 2), Image.NEAREST).save(path)
    entry["label"] = str(path.relative_to(root))


def _grey_mask(root: Path, entry: dict, index: int) -> None:
    mask = np.asarray(Image.open(root / entry["label"])).astype(np.uint8)
    path = root / f"masks/grey_{index}.png"
    Image.fromarray((mask > 0).astype(np.uint8) * np.uint8(7) + np.uint8(3)).save(path)  # values {3, 10}
    entry["label"] = str(path.relative_to(root))


def _colour_mask(root: Path, entry: dict, index: int) -> None:
    mask = np.asarray(Image.open(root / entry["label"])) > 0
    rgb = np.zeros((*mask.shape, 3), np.uint8)
    rgb[mask] = (255, 0, 0)
    path = root / f"masks/colour_{index}.png"
    Image.fromarray(rgb).save(path)
    entry["label"] = str(path.relative_to(root))


@pytest.mark.parametrize(("writer", "fragments"), [
    (_resized_mask, ["size mismatch", "small_0.png", "pixel-aligned"]),
    (_grey_mask, ["grey_0.png: binary mask expected", "found values 3, 10", "set a threshold"]),
    (_colour_mask, ["colour_0.png: colour mask with differing channels"]),
], ids=["mask_size_mismatch", "non_binary_mask", "colour_mask"])
def test_mask_that_does_not_fit_is_named(entry_points, colin27_data, tmp_path, writer, fragments) -> None:
    data = _with_files(colin27_data, tmp_path / "data", "validation", 1, writer)
    entry_points.bundle(DEMO, _overrides(data, tmp_path / "run")).refused(1, "validation samples cannot be loaded",
                                                                        *fragments)


def test_nan_pixels_are_refused(entry_points, colin27_data, tmp_path) -> None:
    def nan_tiff(root: Path, entry: dict, index: int) -> None:
        image = np.asarray(Image.open(root / entry["image"]), dtype=np.float32) / 255.0
        image[10, 10] = np.nan
        path = root / f"images/nan_{index}.tif"
        Image.fromarray(image, mode="F").save(path)
        entry["image"] = str(path.relative_to(root))

    data = _with_files(colin27_data, tmp_path / "data", "validation", 1, nan_tiff)
    entry_points.bundle(DEMO, _overrides(data, tmp_path / "run")).refused(1, "nan_0.tif: contains NaN/Inf pixels")


def test_refusals_from_a_real_process_match_the_fork_server(entry_points, colin27_data, tmp_path) -> None:
    """The corpus runs most cases in forks of one pre-imported interpreter; a real `python -m monai.bundle` process
    gives the same line and exit code (the hook is installed by importing medsam_peft there)."""
    for extra in ({"learning_rate": "abc"}, {"max_epoch": "3"}):
        forked = entry_points.bundle(DEMO, _overrides(colin27_data, tmp_path / "a", **extra))
        real = entry_points.bundle(DEMO, _overrides(colin27_data, tmp_path / "b", **extra), real=True)
        assert real.refused(2) == forked.refused(2)


def test_debug_shows_the_traceback(entry_points, colin27_data, tmp_path) -> None:
    outcome = entry_points.bundle(DEMO, _overrides(colin27_data, tmp_path / "run", learning_rate="abc", debug="True"))
    assert outcome.returncode == 1 and "Traceback" in outcome.stderr and not outcome.errors
    assert "ConfigError: setting 'learning_rate' must be a number >= 0.0, got 'abc'" in outcome.stderr


# ---- the output folder: locks, full disks, unwritable folders ------------------------------------------------------
def test_second_run_on_a_busy_output_folder_names_the_holder(entry_points, colin27_data, tmp_path) -> None:
    import subprocess
    import sys

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from medsam_peft.utils import lock_output_dir; "
                               f"lock_output_dir({str(out)!r}); print('locked', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = entry_points.bundle(DEMO, _overrides(colin27_data, out)).refused(1, f"output folder {out} is in use by "
                                                                                   f"process {holder.pid}")
        assert "wait for that run to finish" in line
        assert sorted(p.name for p in out.iterdir()) == [".medsam_peft.lock"]  # nothing written beside it
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (as after a crash or SIGKILL): its lock went with it, the folder is usable again
    outcome = entry_points.bundle(DEMO, _overrides(colin27_data, out, max_epochs="1"))
    assert outcome.returncode == 0, outcome.stderr[-2000:]


def test_output_folder_that_is_a_file_is_named(entry_points, colin27_data, tmp_path) -> None:
    (tmp_path / "run").write_text("not a folder")
    entry_points.bundle(DEMO, _overrides(colin27_data, tmp_path / "run")).refused(1, f"output folder {tmp_path / 'run'} "
                                                                                   "cannot be used")


def test_full_disk_names_the_folder_and_leaves_no_temporaries(colin27_data, tmp_path) -> None:
    """The output folder on a 400 KiB tmpfs (a private mount namespace: no privileges needed): the first
    checkpoint does not fit. A real process, as users run it."""
    import subprocess
    import sys

    from tests.corpus.conftest import REPO

    mount = tmp_path / "small_disk"
    mount.mkdir()
    out = mount / "run"
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO / DEMO)]
    for key, value in _overrides(colin27_data, out, tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}").items():
        args += [f"--{key}", value]
    listing = tmp_path / "listing.txt"
    script = (f"mount -t tmpfs -o size=400k tmpfs {mount} && {{ {shlex.join(args)}; rc=$?; "
              f"find {mount} -type f > {listing}; exit $rc; }}")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=600)
    from tests.corpus.conftest import Outcome

    line = Outcome(done.returncode, done.stdout, done.stderr).refused(1, "no space left on", str(out / "checkpoints"),
                                                                     "choose another output folder")
    # Which checkpoint overflows first depends on the tiny model's sizes; the line must name that file.
    assert re.search(r"while writing (adapter_best\.safetensors|resume\.pt) \(", line), line
    files = listing.read_text().split()
    assert files and not [f for f in files if f.endswith(".tmp")], files  # no half-written temporaries left

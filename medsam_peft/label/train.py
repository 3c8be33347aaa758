"""MONAI Label ``train`` for a served bundle: fine-tune its adapter on the datastore's labelled images.

``POST /train/<model>`` (3D Slicer's and OHIF's "Train" button, ``MONAILabelClient.train_start``) runs
``SamBundleTrainTask``: the datastore's images with a ``final`` label become 2-D training samples the way
``medsam-peft prepare`` writes them (2-D images as they are, volumes sliced along their last axis with the predictor's
intensity scaling; each label value a separate object), split by image into training and validation (MONAI Label's
``val_split``), and the package's training workflow (``configs/train.json``) runs on them with the bundle's backbone,
tuner, options and prompt mode, starting from the bundle's adapter (``pretrained``, MONAI Label's name for it) and
validating it before the first epoch, so the run reports the served model's score on this data before and after.
The best epoch's adapter replaces ``models/model.safetensors`` atomically when it validates better than the run's starting
adapter (validated before the first epoch; ``"publish": "always"`` takes the last epoch's instead), the previous file
kept in ``models/history/``, and the infer task serves it from its next request on.

The run is a ``python -m monai.bundle run`` child process with its own folder under ``<app>/train/<model>/``
(config, datalist, slices, log, MLflow database), so a failed run leaves the served adapter untouched and says why in
one line, and the server process keeps no training state.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.train import TrainTask

from medsam_peft.errors import DataError, MedsamPeftError
from medsam_peft.label.predictor import BundleError, BundlePredictor, LabelRequestError
from medsam_peft.transforms.io.array import is_volume_path
from medsam_peft.tuners.adapter_io import (
    bundle_adapter_file,
    decoder_shape_of,
    read_adapter,
    tensor_checksum,
    tuner_options_of,
    write_bundle_adapter,
)
from medsam_peft.utils.atomic_io import write_json_atomic

logger = logging.getLogger(__name__)

# What the train panel offers (MONAI Label shows ``config()``), with the values a request may set.
TRAIN_DEFAULTS: dict[str, Any] = {"max_epochs": 1, "val_split": 0.2, "learning_rate": 1e-4, "batch_size": 1,
                                  "pretrained": True, "min_pixels": 20, "publish": "if_better"}
# "if_better": the best epoch's adapter, only when it validates better than the run's starting adapter;
# "always": the last epoch's adapter (a team that trusts its training data more than a small validation split).
PUBLISH_MODES = ("if_better", "always")
# How a bundle's recorded prompt mode trains and what it keeps as best (configs/prompts.json, configs/metrics.json).
PROMPT_RECIPES = {
    "box": ("box", "val_mean_dice", "dice", "with_dice"),
    "interactive": ("interactive", "val_dice_click3", "interactive", "with_interactive"),
    "none": ("none", "val_mean_dice", "dice", "with_dice"),
}
# Keys of configs/train.json's 'defaults' a generated training config takes unchanged.
INHERITED_DEFAULTS = ("squash", "accumulation_steps", "weight_decay", "max_grad_norm", "trunk_cache",
                      "activation_checkpointing", "attention", "cpu_allocator", "distributed", "train_augmentation",
                      "mask_threshold", "num_classes", "query_init", "clicks", "box_probability", "max_corrections",
                      "centre_probability", "supervise_every_round", "hard_negatives", "group_by_image")
# Sections of configs/train.json every bundle pulls in (bundles/conv_lora_demo.json does the same).
WORKFLOW_SECTIONS = ("network", "optimizer", "lr_scheduler", "inferer", "postprocessing", "train", "validate",
                     "initialize", "run")
METRIC_LINE = re.compile(r"^(\w+): zero-shot ([-\d.]+) -> tuned ([-\d.]+) \(epoch (\d+)")


def package_configs_dir(configured: str | os.PathLike | None = None) -> Path:
    """The folder holding ``configs/train.json`` (the workflow every bundle runs): ``configured`` (``--conf configs
    DIR``) or the source checkout the package is installed from (``pip install -e .``)."""
    checkout = Path(__file__).resolve().parents[2]  # medsam_peft/label/train.py -> the source checkout
    folder = Path(configured) if configured else checkout / "configs"
    if not (folder / "train.json").is_file():
        raise BundleError(f"training needs medsam_peft's configs/ folder (configs/train.json), not found in {folder}; "
                          "install medsam_peft from its source checkout (pip install -e .) or start the server with "
                          "--conf configs /path/to/medsam_peft/configs")
    return folder


def _number(request: dict[str, Any], key: str, kind: type, low: float, high: float) -> Any:
    value = request.get(key, TRAIN_DEFAULTS[key])
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and low <= value <= high
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok:
        raise LabelRequestError(422, f"{key} must be {'an integer' if kind is int else 'a number'} in {low:g}..{high:g}, "
                                     f"got {value!r}")
    return kind(value)


def parse_train_request(request: dict[str, Any]) -> dict[str, Any]:
    """The training settings of a ``/train`` request, each checked (a 422 naming the key otherwise)."""
    pretrained = request.get("pretrained", TRAIN_DEFAULTS["pretrained"])
    if not isinstance(pretrained, bool):
        raise LabelRequestError(422, f"pretrained must be true or false, got {pretrained!r}")
    val_split = _number(request, "val_split", float, 0.0, 1.0)
    if not 0.0 < val_split < 1.0:
        raise LabelRequestError(422, f"val_split must be between 0 and 1 (exclusive): the run keeps the adapter that "
                                     f"validates best, got {val_split!r}")
    publish = request.get("publish", TRAIN_DEFAULTS["publish"])
    if publish not in PUBLISH_MODES:
        raise LabelRequestError(422, f"publish must be one of {list(PUBLISH_MODES)}, got {str(publish)[:40]!r}")
    return {"max_epochs": _number(request, "max_epochs", int, 1, 1000),
            "publish": publish,
            "val_split": val_split,
            "learning_rate": _number(request, "learning_rate", float, 1e-8, 1.0),
            "batch_size": _number(request, "batch_size", int, 1, 256),
            "min_pixels": _number(request, "min_pixels", int, 1, 1_000_000),
            "pretrained": pretrained}


def _label_values(label: np.ndarray) -> list[int]:
    return [int(v) for v in np.unique(label) if v > 0]


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """A 2-D label image as its (rows, cols) array of label values (colour labels as grey levels)."""
    from PIL import Image

    with Image.open(path) as opened:
        return np.asarray(opened.convert("L") if opened.mode not in ("L", "I", "I;16", "P") else opened)


def _write_2d_samples(case: str, image: Path, label: Path, out: Path, min_pixels: int) -> list[dict[str, Any]]:
    """One 2-D datastore image: each label value with at least ``min_pixels`` pixels becomes a mask PNG."""
    from PIL import Image

    try:
        with Image.open(image) as opened:
            size = opened.size
        values = read_label_png(label)
    except OSError as err:
        raise DataError(f"cannot read {image.name} or its label {label.name}: {err}; replace the file in the "
                        "datastore") from err
    if values.shape[::-1] != size:
        raise DataError(f"label {label.name} is {values.shape[1]}x{values.shape[0]} but image {image.name} is "
                        f"{size[0]}x{size[1]}; save the label again on this image")
    samples = []
    for value in _label_values(values):
        mask = values == value
        if mask.sum() < min_pixels:
            continue
        mask_path = out / "masks" / f"{case}_label{value:03d}.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
        samples.append({"image": str(image), "label": str(mask_path), "case": case, "slice": 0, "label_id": value})
    return samples


def _write_volume_samples(case: str, image: Path, label: Path, out: Path, min_pixels: int) -> list[dict[str, Any]]:
    """One datastore volume: slices along the last axis as the predictor reads them (MR percentile scaling)."""
    from medsam_peft.data.volumes import slice_cases
    from medsam_peft.transforms.io.array import ImageReadError, LoadVolume

    try:
        values = np.rint(LoadVolume()(label)[0].numpy()).astype(np.int32)
    except ImageReadError as err:
        raise DataError(f"cannot read the label of {image.name}: {err}; save the label again") from err
    names = {value: f"label{value}" for value in _label_values(values)}
    try:
        lists = slice_cases(out, [{"case": case, "image": str(image), "label": str(label)}], {case: "training"},
                            names, plane="axial", window=None, min_pixels=min_pixels)
    except (ValueError, ImageReadError) as err:
        raise DataError(f"cannot slice {image.name} with its label: {err}") from err
    return [{**s, "image": str(out / s["image"]), "label": str(out / s["label"])} for s in lists.get("training", [])]


def datastore_samples(datalist: list[dict[str, str]], out: str | os.PathLike,
                      min_pixels: int) -> dict[str, list[dict[str, Any]]]:
    """2-D training samples (image, binary mask) of each labelled datastore image, keyed by image id."""
    out = Path(out)
    samples: dict[str, list[dict[str, Any]]] = {}
    for entry in datalist:
        image, label = Path(entry["image"]), Path(entry["label"])
        case = re.sub(r"[^\w.-]", "_", image.name.split(".")[0])
        write = _write_volume_samples if is_volume_path(image) else _write_2d_samples
        found = write(case, image, label, out, min_pixels)
        if found:
            samples[case] = found
        else:
            logger.warning("%s: no label with %d pixels or more in any slice; not used for training", image.name,
                           min_pixels)
    return samples


def split_samples(samples: dict[str, list[dict[str, Any]]], val_split: float) -> tuple[list, list]:
    """Training and validation lists: whole images go to validation (MONAI Label's ``partition_dataset`` order) when
    there are two or more, else every ``1/val_split``-th slice of the one image."""
    from monai.data import partition_dataset

    cases = sorted(samples)
    if len(cases) >= 2:
        train_cases, val_cases = partition_dataset(cases, ratios=[1 - val_split, val_split], shuffle=False)
        if not val_cases:
            train_cases, val_cases = cases[:-1], cases[-1:]
        if not train_cases:
            train_cases, val_cases = val_cases[:1], val_cases[1:]
        return ([s for c in train_cases for s in samples[c]], [s for c in val_cases for s in samples[c]])
    only = samples[cases[0]] if cases else []
    step = max(2, round(1 / val_split))
    return ([s for i, s in enumerate(only) if i % step != step - 1], [s for i, s in enumerate(only) if i % step == step - 1])


def training_config(configs: Path, adapter: Path, inference: dict[str, Any], settings: dict[str, Any],
                    run_dir: Path, device: str, name: str) -> dict[str, Any]:
    """A bundle config like ``bundles/conv_lora_demo.json`` for this bundle's model and the datastore's samples."""
    meta = read_adapter(adapter)["metadata"]
    prompt = str(inference.get("prompt", "box"))
    if prompt not in PROMPT_RECIPES:
        raise BundleError(f"{name}: inference.json records prompt {prompt!r}; training knows {sorted(PROMPT_RECIPES)}")
    prompts, key_metric, key_def, additional = PROMPT_RECIPES[prompt]
    shape = decoder_shape_of(meta)
    if shape["num_classes"] is not None:
        raise BundleError(f"{name} is a multi-class model; training from MONAI Label's binary labels needs a binary one")
    train = f"%{configs / 'train.json'}::"
    config: dict[str, Any] = {
        "imports": train + "imports",
        "bundle_root": str(run_dir),
        "dataset_name": f"monailabel_{name}",
        "dataset_dir": str(run_dir / "data"),
        "datalist_file": str(run_dir / "datalist.json"),
        "prepare_data": None,
        "output_dir": str(run_dir),
        "backbone": meta["backbone"],
        "checkpoint": inference.get("checkpoint"),
        "image_size": int(meta["image_size"]),
        "tuner": meta["tuner"],
        "tuner_options": {k: v for k, v in tuner_options_of(meta).items() if k != "tuner"},
        "mask_tokens": shape["mask_tokens"],
        "max_epochs": settings["max_epochs"],
        "learning_rate": settings["learning_rate"],
        "batch_size": settings["batch_size"],
        "loss": f"%{configs / 'losses.json'}::dice_ce",
        "key_metric": key_metric,
        "key_metric_def": f"%{configs / 'metrics.json'}::{key_def}",
        "additional_metrics": f"%{configs / 'metrics.json'}::{additional}",
        "prepare_batch": f"%{configs / 'prompts.json'}::{prompts}",
        "multimask": bool(inference.get("multimask", False)),
        "click_radius": float(inference.get("click_radius", 0.0)),
        "train_box_jitter": 10,
        "early_stop_patience": 0,
        "resume": False,  # each request trains in a new folder on what the datastore holds now
        "num_workers": 0,
        "overlays": 0,
        "seed": 0,
        "precision": inference.get("precision", "auto"),
        "device": f"$torch.device({device!r})",
        "tracking_uri": f"sqlite:///{run_dir / 'mlruns.db'}",
        "experiment_name": f"monailabel_{name}",
        "run_name": f"{meta['tuner']}_{meta['backbone']}_{run_dir.name}",
        **{key: train + f"defaults#{key}" for key in INHERITED_DEFAULTS},
        # the bundle's adapter as the starting point: build_tuned_sam loads it into the tuned model
        "network_def": {"_target_": "medsam_peft.build_tuned_sam", "backbone": "@backbone",
                        "checkpoint": "@checkpoint", "tuner": "@tuner", "image_size": "@image_size",
                        "tuner_options": "@tuner_options", "trunk_cache": "@trunk_cache",
                        "activation_checkpointing": "@activation_checkpointing", "attention": "@attention",
                        "mask_tokens": "@mask_tokens", "num_classes": "@num_classes",
                        "query_init": "@query_init", "adapter": str(adapter) if settings["pretrained"] else None},
        **{section: train + section for section in WORKFLOW_SECTIONS},
    }
    return config


def read_metric_report(path: Path) -> dict[str, dict[str, float]]:
    """``metric_report.txt`` lines (``key: zero-shot A -> tuned B (epoch E, ...)``) as {key: {before, after, epoch}}."""
    found = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        match = METRIC_LINE.match(line)
        if match:
            found[match[1]] = {"before": float(match[2]), "after": float(match[3]), "epoch": int(match[4])}
    return found


def publish_adapter(bundle_dir: Path, adapter: Path, stamp: str, note: str) -> Path:
    """Make ``adapter`` the bundle's adapter (``models/model.safetensors`` and its plain ``model.pt`` twin, atomic
    renames; the previous adapter kept in ``models/history``) and record the change in ``configs/metadata.json``
    (patch version + changelog)."""
    payload = read_adapter(adapter)  # a damaged file never replaces a working one
    current = bundle_adapter_file(bundle_dir)
    history = bundle_dir / "models" / "history"
    history.mkdir(parents=True, exist_ok=True)
    shutil.copy2(current, history / f"model_{stamp}{current.suffix}")
    target = write_bundle_adapter(bundle_dir, payload)
    meta_file = bundle_dir / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    major, minor, patch = (list(map(int, str(meta.get("version", "0.1.0")).split(".")[:3])) + [0, 0, 0])[:3]
    meta["version"] = f"{major}.{minor}.{patch + 1}"
    meta["changelog"] = {meta["version"]: note, **meta.get("changelog", {})}
    write_json_atomic(meta_file, meta, indent=2)
    return target


def _tensor_checksum(adapter: Path) -> str:
    return tensor_checksum(read_adapter(adapter)["state_dict"])


class TrainRunError(MedsamPeftError, RuntimeError):
    """The training child process failed; the message is its last error line and where the log is."""


def _last_error_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line) or "Error:" in line]
    return (errors or lines or ["no output"])[-1][:300]


class SamBundleTrainTask(TrainTask):
    """MONAI Label's train task for one served bundle (see the module docstring)."""

    def __init__(self, predictor: BundlePredictor, work_dir: str | os.PathLike, configs: str | None = None,
                 device: str = "cpu") -> None:
        super().__init__(f"fine-tune {predictor.name}'s adapter on the datastore's final labels")
        self.predictor = predictor
        self.work_dir = Path(work_dir)
        self.configs = configs
        self.device = device

    def config(self) -> dict[str, Any]:
        return {**TRAIN_DEFAULTS, "device": self.device}

    def stats(self) -> dict[str, Any]:
        last = self.work_dir / "last_run.json"
        try:
            return json.loads(last.read_text()) if last.is_file() else {}
        except json.JSONDecodeError:
            return {}

    def __call__(self, request: dict[str, Any], datastore) -> dict[str, Any]:
        settings = parse_train_request(request)
        device = str(request.get("device") or self.device)
        if isinstance(request.get("device"), list):  # the panel's list of choices, sent back unchanged
            device = str(request["device"][0])
        if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
            raise LabelRequestError(422, f"device must be 'cpu', 'cuda' or 'cuda:N', got {device[:40]!r}")
        configs = package_configs_dir(self.configs)
        stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime()) + f"_{os.getpid()}"
        run_dir = self.work_dir / stamp
        (run_dir / "data").mkdir(parents=True)
        samples = datastore_samples(datastore.datalist(), run_dir / "data", settings["min_pixels"])
        count = sum(len(v) for v in samples.values())
        if count < 2:
            raise DataError(f"the datastore has {count} labelled sample(s) (final labels with >= "
                            f"{settings['min_pixels']} pixels); label at least two slices or images before training")
        training, validation = split_samples(samples, settings["val_split"])
        if not training or not validation:
            raise DataError(f"{count} labelled samples cannot be split with val_split {settings['val_split']}; "
                            "label more images or change val_split")
        write_json_atomic(run_dir / "datalist.json", {"training": training, "validation": validation})
        bundle = self.predictor.bundle_dir
        config = training_config(configs, self.predictor.adapter_file, self.predictor.config, settings, run_dir,
                                 device, self.predictor.name)
        config_file = write_json_atomic(run_dir / "train_config.json", config, indent=1)
        log = run_dir / "train.log"
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        started = time.monotonic()
        with open(log, "w") as handle:
            done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config_file)],
                                  stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=run_dir)
        seconds = round(time.monotonic() - started, 1)
        if done.returncode != 0:
            raise TrainRunError(f"training {self.predictor.name} failed: {_last_error_line(log)} (log: {log})")
        metrics = read_metric_report(run_dir / "metric_report.txt")
        key = metrics.get(PROMPT_RECIPES[self.predictor.prompt][1]) if self.predictor.prompt in PROMPT_RECIPES else None
        if settings["publish"] == "always":
            chosen, replaced = run_dir / "adapter_final.safetensors", True
        else:
            # The best-adapter checkpoint weighs the starting adapter too (validated before the first epoch, keeping
            # the first of equal scores). From the served adapter, a best file that differs from it is a trained epoch
            # that scored higher; from a fresh one (not kept), the last epoch must beat the fresh score (the report's
            # "after" is the last epoch's), so a run never publishes what validated worse than where it started.
            chosen = run_dir / "checkpoints" / "adapter_best.safetensors"
            replaced = settings["pretrained"] or (key is not None and key["after"] > key["before"])
        if replaced and not chosen.is_file():
            raise TrainRunError(f"training {self.predictor.name} wrote no {chosen.name} (log: {log})")
        replaced = replaced and _tensor_checksum(chosen) != _tensor_checksum(self.predictor.adapter_file)
        if replaced:
            note = (f"fine-tuned in MONAI Label on {len(training)} samples of {len(samples)} datastore images, "
                    f"{settings['max_epochs']} epoch(s), run {stamp}")
            publish_adapter(bundle, chosen, stamp, note)
        else:
            logger.warning("%s: no epoch validated better than the run's starting adapter; the served one is kept",
                           self.predictor.name)
        result = {"model": self.predictor.name, "run": stamp, "replaced": replaced, "train_samples": len(training),
                  "val_samples": len(validation), "images": len(samples), "epochs": settings["max_epochs"],
                  "seconds": seconds, "metrics": metrics, "adapter": str(bundle_adapter_file(bundle)),
                  "log": str(log)}
        write_json_atomic(self.work_dir / "last_run.json", result, indent=1)
        logger.info("trained %s: %s", self.predictor.name, json.dumps(metrics))
        return result


__all__ = ["SamBundleTrainTask", "TrainRunError", "datastore_samples", "package_configs_dir", "parse_train_request",
           "publish_adapter", "read_label_png", "read_metric_report", "split_samples", "training_config"]

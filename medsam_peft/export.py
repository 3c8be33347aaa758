"""``medsam-peft export-bundle RUN_DIR OUT_DIR``: a self-contained MONAI bundle of a tuned model.

The bundle holds the adapter only (``models/model.safetensors``: trainable tensors + metadata, a few MB, and its plain
state-dict twin ``models/model.pt`` for MONAI's ``ckpt_export``); the frozen base is
rebuilt from the backbone's release name (downloaded and verified on first use) or the local checkpoint path the
run used. ``configs/inference.json`` needs no file outside the bundle, so MONAI Label and ``monai.bundle run`` load it
from anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from medsam_peft.data.catalog import dataset_modality
from medsam_peft.errors import DataError
from medsam_peft.tuners.adapter_io import BUNDLE_ADAPTER, read_adapter, write_bundle_adapter

SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import monai
    import numpy
    import torch

    packages = {name: version(name) for name in ("medsam_peft", "segment-anything", "pytorch-ignite", "pillow",
                                                 "safetensors")}
    return {"monai": monai.__version__, "torch": torch.__version__.split("+")[0], "numpy": numpy.__version__,
            **packages}


def _to_masks(semantic: bool) -> list[dict[str, Any]]:
    """Network output -> masks at each image's original size: sigmoid + threshold (binary) or the per-class
    probabilities of the multi-class decoder + argmax (a class-id map), both inverted before the decision."""
    invert = {"_target_": "Invertd", "keys": ["pred", "prob"] if semantic else "pred", "transform": "@preprocessing",
              "orig_keys": "image", "nearest_interp": False}
    if semantic:  # the network_def already returns the per-class probabilities (semantic_output)
        return [{"_target_": "CopyItemsd", "keys": "pred", "names": "prob"}, invert,
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
    return [{"_target_": "Activationsd", "keys": "pred", "sigmoid": True}, invert,
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}]


def inference_config(run: dict[str, Any], image_size: int) -> dict[str, Any]:
    """The exported ``configs/inference.json``: a datalist of {image[, box][, name]} -> PNG masks (class-id maps for
    a multi-class model: ``run["num_classes"]``)."""
    semantic = bool(run.get("num_classes"))
    prompt = run.get("prompt", "none")
    # A click-trained model also takes boxes: the datalist inference of an exported bundle feeds the box.
    boxed = prompt in ("box", "interactive")
    prepare = ({"_target_": "PrepareBatchExtraInput", "extra_keys": {"boxes": "box"}} if boxed
               else {"_target_": "PrepareBatchDefault"})
    squash = bool(run.get("squash", False))
    return {
        "_desc_": "Inference with the tuned SAM in models/model.safetensors: python -m monai.bundle run --config_file "
                  "configs/inference.json --bundle_root . --datalist requests.json (a list of {\"image\": path, "
                  "\"box\": [x0, y0, x1, y1] in image pixels}" + ("; the box is required" if boxed else "")
                  + "; --infer_batch_size N, default 4). Masks go to <output_dir>/<image stem>_pred.png" + (
                      f" as class-id maps ({', '.join(f'{i} {n}' for i, n in enumerate(run.get('class_names') or []))})"
                      if semantic else "") + ".",
        "imports": ["$import os", "$import json", "$import medsam_peft", "$import medsam_peft.data",
                    "$import medsam_peft.transforms", "$import medsam_peft.engines"],
        "bundle_root": ".",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "datalist": None,
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "image_size": image_size,
        "squash": squash,
        "prompt": prompt,
        **({"num_classes": int(run["num_classes"]), "class_names": list(run["class_names"])} if semantic else {}),
        "multimask": bool(run.get("multimask", False)),  # a lone first click: the most confident of SAM's 3 masks
        "click_radius": float(run.get("click_radius", 0.0)),  # clicks written into the fed-back mask prompt
        "precision": run.get("precision", "auto"),
        "checkpoint": run.get("checkpoint") or None,
        # a multi-class network returns its (B, C, H, W) class probabilities: MONAI's bundle tools need a tensor
        "network_def": {"_target_": "medsam_peft.load_tuned_sam",
                        "adapter": f"$os.path.join(@bundle_root, '{BUNDLE_ADAPTER}')", "checkpoint": "@checkpoint",
                        **({"semantic_output": "probabilities"} if semantic else {})},
        "network": "$@network_def.to(@device).eval()",
        # the training chain's own preprocessing (medsam_peft.transforms.sam_preprocessing), images only
        "preprocessing": {"_target_": "Compose", "transforms": "$medsam_peft.transforms.sam_preprocessing(@image_size, "
                          "@squash, None) + [medsam_peft.transforms.ScaleBoxd('box', 'image_original_size', "
                          "@image_size, @squash)]"},
        "dataset": {"_target_": "Dataset", "data": "$medsam_peft.data.load_requests(@datalist, "
                    "medsam_peft.engines.prompt_keys(@prepare_batch), option='--datalist')",
                    "transform": "@preprocessing"},
        "infer_batch_size": 4,
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": "@infer_batch_size",
                       "shuffle": False, "num_workers": 0},
        "prepare_batch": prepare,
        "inferer": {"_target_": "medsam_peft.engines.AutocastInferer", "dtype": "@precision"},
        "postprocessing": {"_target_": "Compose", "transforms": _to_masks(semantic) + [
            {"_target_": "medsam_peft.transforms.SaveMaskd", "keys": "pred", "output_dir": "@output_dir",
             "label_map": semantic}]},
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "prepare_batch": "@prepare_batch", "inferer": "@inferer",
                      "postprocessing": "@postprocessing"},
        # requests checked first; on the CPU freed memory is kept for the next batch (utils/cpu_allocator.py)
        "cpu_allocator": "reuse",
        "initialize": ["$len(@dataset#data)", "$monai.utils.set_determinism(seed=0)",
                       "$medsam_peft.utils.configure_cpu_allocator(@cpu_allocator, @device)"],
        "run": ["$@evaluator.run()"],
    }


def evaluate_config(run: dict[str, Any], image_size: int) -> dict[str, Any]:
    """The exported ``configs/evaluate.json``: a MONAI datalist of {image, label} -> Dice/IoU at each image's original
    size and the predicted masks, the steps of medsam_peft's ``configs/evaluate.json`` (boxes from the masks, no
    jitter, for box-prompted models)."""
    config = inference_config(run, image_size)
    semantic = bool(run.get("num_classes"))
    boxed = config["prompt"] in ("box", "interactive") and not semantic
    mode = "multiclass" if semantic else "binary"
    chain = f"medsam_peft.transforms.sam_preprocessing(@image_size, @squash, '{mode}', {run.get('mask_threshold')!r})"
    metric = {"include_background": True, "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}
    config.update({
        "_desc_": "Evaluation of the tuned SAM in models/model.safetensors: python -m monai.bundle run --config_file "
                  "configs/evaluate.json --bundle_root . --datalist datalist.json [--eval_split validation] "
                  "(MONAI's datalist format {\"validation\": [{\"image\": path, \"label\": mask}, ...]}, paths "
                  "relative to its folder; --eval_batch_size N, default 4)" + ("; each image is prompted with the box around its mask" if boxed else "")
                  + ". Scores at each image's original size; masks and metrics.json go to <output_dir>.",
        "eval_split": "validation",
        "eval_batch_size": 4,
        "preprocessing": {"_target_": "Compose", "transforms": f"${chain}[:2] + [monai.transforms.CopyItemsd('label', "
                          f"names='label_original')] + {chain}[2:]" + (
                              " + [medsam_peft.transforms.RandBoxFromMaskd('label', 'box', max_jitter=0)]" if boxed else "")},
        "dataset": {"_target_": "Dataset", "data": "$medsam_peft.data.load_datalist(@datalist, @eval_split, "
                    "os.path.dirname(os.path.abspath(@datalist)))", "transform": "@preprocessing"},
        "postprocessing": {"_target_": "Compose", "transforms": _to_masks(semantic) + [
            {"_target_": "DeleteItemsd", "keys": "label"},
            {"_target_": "medsam_peft.transforms.CropToShaped", "keys": "label_original"},
            {"_target_": "CopyItemsd", "keys": "label_original", "names": "label"},
            {"_target_": "medsam_peft.transforms.SaveMaskd", "keys": "pred", "name_key": "label",
             "output_dir": "$os.path.join(@output_dir, 'predictions')", "label_map": semantic}]},
    })
    # batched: the labels kept at each image's original size differ in shape, so they are padded and cropped back
    config["dataloader"] = {**config["dataloader"], "batch_size": "@eval_batch_size",
                            "collate_fn": {"_target_": "medsam_peft.data.PadRaggedCollate", "keys": ["label_original"]}}
    if semantic:  # dataset-accumulated IoUs, as in training (medsam_peft.engines.semantic_metrics)
        config["evaluator"] = {**config["evaluator"],
                               "key_val_metric": "$medsam_peft.engines.semantic_metrics(@num_classes, "
                                                 "key='val_foreground_miou')",
                               "additional_metrics": "$medsam_peft.engines.semantic_metrics(@num_classes, "
                                                     "@class_names, without='val_foreground_miou')"}
    else:
        config["evaluator"] = {**config["evaluator"],
                               "key_val_metric": {"val_mean_dice": {"_target_": "MeanDice", **metric}},
                               "additional_metrics": {"val_mean_iou": {"_target_": "MeanIoUHandler", **metric}}}
    config["initialize"] = ["$monai.utils.set_determinism(seed=0)",
                            "$medsam_peft.utils.configure_cpu_allocator(@cpu_allocator, @device)"]
    config["run"] = ["$@evaluator.run()", "$medsam_peft.engines.write_metrics(@evaluator, "
                     "os.path.join(@output_dir, 'metrics.json'), @eval_split)"]
    return config


def model_folder_kind(folder: str | os.PathLike) -> str:
    """``"bundle"`` for an exported bundle (a pulled Hub repository too: ``configs/inference.json``), ``"run"`` for a
    training run's output folder (``run_config.json``); the commands that take either ask here.

    Raises:
        DataError: naming the folder when it is neither.
    """
    folder = Path(folder)
    if (folder / "configs" / "inference.json").is_file():
        return "bundle"
    if (folder / "run_config.json").is_file():
        return "run"
    raise DataError(f"{folder} is neither a training run folder (run_config.json) nor an exported bundle "
                    "(configs/inference.json)")


ADAPTER_CANDIDATES = ("checkpoints/adapter_best.safetensors", "adapter_final.safetensors",
                      "checkpoints/adapter_best.pt", "adapter_final.pt")  # .pt: runs from before safetensors


def run_evaluation(run_dir: Path, meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The numbers an exported bundle reports: ``configs/evaluate.json``'s ``eval/metrics.json`` when that was run
    (original image size), else the validation the adapter file recorded when it was saved (model resolution)."""
    metrics_file = run_dir / "eval" / "metrics.json"
    if metrics_file.is_file():
        report = json.loads(metrics_file.read_text())
        return (f"configs/evaluate.json on the {report.get('split') or 'held-out'} split, at each image's original "
                "size", report)
    validation = meta.get("validation")
    if isinstance(validation, dict) and validation.get("metrics"):
        return (f"validation during training (epoch {validation.get('epoch')}, model resolution)",
                {"split": "validation", "metrics": validation["metrics"]})
    return "not run", {"split": "", "metrics": {}}


def datalist_summary(run: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """The ``meta`` of a training run's datalist (``run["datalist_file"]``) and its split sizes; empty if absent."""
    path = run.get("datalist_file")
    if not path or not Path(path).is_file():
        return {}, {}
    datalist = json.loads(Path(path).read_text())
    counts = {k: len(v) for k, v in datalist.items() if isinstance(v, list) and not k.endswith("_volumes")}
    return datalist.get("meta", {}) if isinstance(datalist.get("meta"), dict) else {}, counts


def run_classes(meta: dict[str, Any], data_meta: dict[str, Any]) -> tuple[int | None, list[str] | None]:
    """(num_classes, class names) of an adapter (``meta``: its metadata; the decoder it was saved with is the truth,
    so runs whose run_config.json predates num_classes are multi-class too); (None, None) if binary. The names are
    the datalist's ``meta.classes`` (``data_meta``) when they name every class, else ``background, class_1, ...``."""
    num_classes = meta.get("decoder", {}).get("num_classes")
    if not num_classes:
        return None, None
    num_classes = int(num_classes)
    names = data_meta.get("classes")
    if isinstance(names, list) and len(names) == num_classes:
        return num_classes, [str(n) for n in names]
    return num_classes, ["background"] + [f"class_{i}" for i in range(1, num_classes)]


def _base_weights(backbone: str, checkpoint: str) -> dict[str, str] | None:
    """The release the frozen base comes from (URL + digest) when it is a download, for ``large_files.yml``."""
    from medsam_peft.models.registry import get_backbone_spec

    source = get_backbone_spec(backbone).checkpoints.get(checkpoint)  # a release name; None for paths and "bundled"
    if source is None:
        return None
    hash_type, hash_val = ("sha256", source.sha256) if source.sha256 else ("md5", source.md5)
    return {"path": f"models/base/{source.filename}", "url": source.url, "hash_val": hash_val or "",
            "hash_type": hash_type}


def _docs(title: str, meta: dict[str, Any], run: dict[str, Any], report: dict[str, Any], evaluated: str,
          evaluation: dict[str, Any], data_meta: dict[str, Any], counts: dict[str, int], metric_lines: list[str],
          modality: str) -> str:
    metrics = evaluation["metrics"]
    table = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items()) if metrics else "| (none) | |"
    recipe = {k: run[k] for k in ("max_epochs", "learning_rate", "batch_size", "weight_decay", "accumulation_steps",
                                  "precision", "prompt", "multimask", "click_radius", "key_metric", "seed") if k in run}
    structures = data_meta.get("structures") or data_meta.get("classes")
    data_lines = [f"- dataset `{run.get('dataset', 'unknown')}` ({modality})"
                  + (f": {data_meta.get('title')}" if data_meta.get("title") else "")]
    if counts:
        data_lines.append("- samples: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    if structures:
        data_lines.append("- structures: " + ", ".join(map(str, structures.values() if isinstance(structures, dict)
                                                               else structures)))
    if data_meta.get("note"):
        data_lines.append(f"- {data_meta['note']}")
    return "\n".join([
        f"# {title}", "",
        f"A MONAI bundle exported by `medsam-peft export-bundle` from the training run `{run.get('run_dir', '')}`.",
        "", "## Model", "",
        f"- backbone `{meta['backbone']}` (base weights: {run.get('checkpoint') or 'release default'}, fetched and "
        "verified by medsam_peft, not stored here), tuner `{}`".format(meta["tuner"]),
        f"- tuner options `{json.dumps(meta['options'])}`",
        f"- trainable parameters: {report.get('trainable', 'n/a'):,} of {report.get('total', 'n/a'):,}"
        if isinstance(report.get("trainable"), int) else "- trainable parameters: n/a",
        f"- input {meta['image_size']}x{meta['image_size']} RGB in [0, 1], prompt: {run.get('prompt', 'none')}",
        "", "## Results", "", f"Evaluation: {evaluated}.", "", "| metric | value |", "|---|---|", table, "",
        *(["Zero-shot (before tuning) vs tuned, from the run's metric report:", "", "```", *metric_lines, "```", ""]
          if metric_lines else []),
        "## Training recipe", "", "```json", json.dumps(recipe, indent=1), "```", "",
        "`configs/train.json` in this bundle records the run's settings; retrain with medsam_peft's training bundles "
        "(`python -m monai.bundle run --config_file bundles/<bundle>.json` with these values as overrides).", "",
        "## Data", "", *data_lines, "",
        "## Use", "", "```", "pip install medsam_peft",
        "python -m monai.bundle run --config_file configs/inference.json --bundle_root . --datalist requests.json",
        "medsam-peft predict --adapter models/model.safetensors --input FOLDER_OR_FILE --output masks/",
        "```", "",
        "`requests.json` lists `{\"image\": path, \"box\": [x0, y0, x1, y1]}` in image pixels. "
        "`models/model.safetensors` is the adapter (tensors + metadata); `models/model.pt` holds the same tensors as a "
        "plain state dict for MONAI's `ckpt_export`.", "",
        "Intended use: research; not for clinical use.", "",
    ])


def export_bundle(run_dir: str | os.PathLike, out_dir: str | os.PathLike, adapter: str | os.PathLike | None = None,
                  name: str | None = None, label_name: str = "foreground") -> Path:
    """Write ``out_dir`` as a MONAI bundle from the training run in ``run_dir`` (its best adapter by default)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    candidates = [Path(adapter)] if adapter else [run_dir / c for c in ADAPTER_CANDIDATES]
    source = next((p for p in candidates if p.is_file()), None)
    if source is None:
        raise FileNotFoundError(f"no adapter in {run_dir} (looked for {', '.join(str(p) for p in candidates)}); "
                                "pass the training run's output_dir or --adapter FILE")
    payload = read_adapter(source)  # refuses files that are not adapters
    meta = payload["metadata"]
    run_file = run_dir / "run_config.json"
    run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    run["run_dir"] = str(run_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new folder")
    image_size = int(meta["image_size"])
    versions = _versions()
    title = name or f"{meta['tuner']} {meta['backbone']} {run.get('dataset', '')}".strip()
    for sub in ("configs", "models", "docs"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    write_bundle_adapter(out_dir, payload)
    report_file = run_dir / "parameter_report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    evaluated, evaluation = run_evaluation(run_dir, meta)
    data_meta, counts = datalist_summary(run)
    modality, data_type = dataset_modality(str(run.get("dataset", "")))
    report_lines = (run_dir / "metric_report.txt").read_text().splitlines() if (run_dir / "metric_report.txt").is_file() else []
    num_classes, names = run_classes(meta, data_meta)
    task = "Multi-class" if num_classes else "Binary"
    if num_classes:
        run["num_classes"], run["class_names"] = num_classes, names
    channel_def = dict(enumerate(run["class_names"])) if num_classes else {0: "background", 1: label_name}
    label_text = ", ".join(f"{i} {n}" for i, n in channel_def.items())
    metadata = {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by medsam-peft from {run_dir.name}"},
        "monai_version": versions["monai"],
        "pytorch_version": versions["torch"],
        "numpy_version": versions["numpy"],
        "required_packages_version": {k: versions[k] for k in ("medsam_peft", "segment-anything", "pytorch-ignite",
                                                                "pillow", "safetensors")},
        "name": title,
        "task": f"{task} segmentation ({label_name if not num_classes else f'{num_classes - 1} classes'}) of {modality} images with a SAM-family model tuned by "
                f"{meta['tuner']}",
        "description": f"{meta['backbone']} + {meta['tuner']} adapter ({report.get('trainable', 'n/a')} trainable "
                       f"parameters) trained on {run.get('dataset', 'user data')} ({modality}); prompt: "
                       f"{run.get('prompt', 'none')}. configs/inference.json segments 2-D images (volumes are sliced "
                       "by medsam-peft predict and the MONAI Label app). The base weights are fetched by medsam_peft "
                       f"(checkpoint {run.get('checkpoint') or 'release default'}), not stored here.",
        "authors": "medsam_peft users",
        "copyright": "Copyright (c) the model's trainers; code Apache-2.0",
        "data_source": f"{run.get('dataset', 'user data')}" + (f" ({data_meta['source']})" if data_meta.get("source") else ""),
        "data_type": data_type,
        "image_classes": f"{modality}, 3 channels (grey images repeated), intensities scaled to [0, 1]",
        "label_classes": label_text,
        "eval_metrics": evaluation["metrics"],
        "intended_use": f"Research: {label_name} segmentation in {modality} images like those of "
                        f"{run.get('dataset', 'its training data')}; not for clinical use",
        "references": ["Zhong et al., Convolution Meets LoRA, ICLR 2024", "Peng et al., SAM-PARSER, AAAI 2024",
                       "Kirillov et al., Segment Anything, ICCV 2023"],
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "RGB", "modality": modality, "num_channels": 3,
                                 "spatial_shape": [image_size, image_size], "dtype": "float32",
                                 "value_range": [0, 1], "is_patch_data": False,
                                 "channel_def": {"0": "R", "1": "G", "2": "B"}}},
            # network_def's output: one logit channel (binary) or a probability per class (multi-class)
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": num_classes or 1,
                                 "spatial_shape": [image_size, image_size], "dtype": "float32",
                                 "value_range": [0, 1], "is_patch_data": False,
                                 "channel_def": {str(i): n for i, n in channel_def.items()}}},
        },
    }
    (out_dir / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (out_dir / "configs" / "inference.json").write_text(json.dumps(inference_config(run, image_size), indent=2))
    (out_dir / "configs" / "evaluate.json").write_text(json.dumps(evaluate_config(run, image_size), indent=2))
    # the run's settings, for whoever retrains (the training chain itself lives in medsam_peft's configs/)
    (out_dir / "configs" / "train.json").write_text(json.dumps(
        {"_desc_": "Settings of the training run this bundle was exported from (run_config.json); pass them as "
                   "overrides to a medsam_peft training bundle to retrain.",
         **{k: v for k, v in run.items() if k != "run_dir"}, "tuner": meta["tuner"], "tuner_options": meta["options"]},
        indent=2))
    (out_dir / "docs" / "metrics.json").write_text(json.dumps({"evaluated": evaluated, **evaluation}, indent=2))
    base = _base_weights(meta["backbone"], str(run.get("checkpoint") or ""))
    if base is not None:
        (out_dir / "large_files.yml").write_text(
            "large_files:\n" + "".join(f'  {"-" if i == 0 else " "} {k}: "{v}"\n' for i, (k, v) in enumerate(base.items())))
    license_text = resources.files("medsam_peft").joinpath("resources/LICENSE-Apache-2.0.txt").read_text()
    (out_dir / "LICENSE").write_text(license_text)
    (out_dir / "docs" / "README.md").write_text(_docs(title, meta, run, report, evaluated, evaluation, data_meta,
                                                      counts, report_lines, modality))
    return out_dir

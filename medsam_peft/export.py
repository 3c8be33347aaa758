"""``medsam-peft export-bundle RUN_DIR OUT_DIR``: a self-contained MONAI bundle of a tuned model.

The bundle holds the adapter only (``models/model.pt``: trainable tensors + metadata, a few MB); the frozen base is
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

from medsam_peft.tuners.adapter_io import read_adapter

SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import monai
    import numpy
    import torch

    packages = {name: version(name) for name in ("medsam_peft", "segment-anything", "pytorch-ignite", "pillow")}
    return {"monai": monai.__version__, "torch": torch.__version__.split("+")[0], "numpy": numpy.__version__,
            **packages}


def inference_config(run: dict[str, Any], image_size: int) -> dict[str, Any]:
    """The exported ``configs/inference.json``: a datalist of {image[, box][, name]} -> PNG masks."""
    prompt = run.get("prompt", "none")
    # A click-trained model also takes boxes: the datalist inference of an exported bundle feeds the box.
    boxed = prompt in ("box", "interactive")
    prepare = ({"_target_": "PrepareBatchExtraInput", "extra_keys": {"boxes": "box"}} if boxed
               else {"_target_": "PrepareBatchDefault"})
    squash = bool(run.get("squash", False))
    return {
        "_desc_": "Inference with the tuned SAM in models/model.pt: python -m monai.bundle run --config_file "
                  "configs/inference.json --bundle_root . --datalist requests.json (a list of {\"image\": path, "
                  "\"box\": [x0, y0, x1, y1] in image pixels}" + ("; the box is required" if boxed else "")
                  + "). Masks go to <output_dir>/<image stem>_pred.png.",
        "imports": ["$import os", "$import json", "$import medsam_peft", "$import medsam_peft.data",
                    "$import medsam_peft.transforms", "$import medsam_peft.engines"],
        "bundle_root": ".",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "datalist": None,
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "image_size": image_size,
        "squash": squash,
        "prompt": prompt,
        "multimask": bool(run.get("multimask", False)),  # a lone first click: the most confident of SAM's 3 masks
        "precision": run.get("precision", "auto"),
        "checkpoint": run.get("checkpoint") or None,
        "network_def": {"_target_": "medsam_peft.load_tuned_sam",
                        "adapter": "$os.path.join(@bundle_root, 'models', 'model.pt')", "checkpoint": "@checkpoint"},
        "network": "$@network_def.to(@device).eval()",
        # the training chain's own preprocessing (medsam_peft.transforms.sam_preprocessing), images only
        "preprocessing": {"_target_": "Compose", "transforms": "$medsam_peft.transforms.sam_preprocessing(@image_size, "
                          "@squash, None) + [medsam_peft.transforms.ScaleBoxd('box', 'image_original_size', "
                          "@image_size, @squash)]"},
        "dataset": {"_target_": "Dataset", "data": "$medsam_peft.data.load_requests(@datalist, "
                    "medsam_peft.engines.prompt_keys(@prepare_batch), option='--datalist')",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "prepare_batch": prepare,
        "inferer": {"_target_": "medsam_peft.engines.AutocastInferer", "dtype": "@precision"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False},
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
            {"_target_": "medsam_peft.transforms.SaveMaskd", "keys": "pred", "output_dir": "@output_dir"}]},
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "prepare_batch": "@prepare_batch", "inferer": "@inferer",
                      "postprocessing": "@postprocessing"},
        "initialize": ["$len(@dataset#data)", "$monai.utils.set_determinism(seed=0)"],  # requests checked first
        "run": ["$@evaluator.run()"],
    }


def export_bundle(run_dir: str | os.PathLike, out_dir: str | os.PathLike, adapter: str | os.PathLike | None = None,
                  name: str | None = None, label_name: str = "foreground") -> Path:
    """Write ``out_dir`` as a MONAI bundle from the training run in ``run_dir`` (its best adapter by default)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    candidates = [Path(adapter)] if adapter else [run_dir / "checkpoints" / "adapter_best.pt",
                                                   run_dir / "adapter_final.pt"]
    source = next((p for p in candidates if p.is_file()), None)
    if source is None:
        raise FileNotFoundError(f"no adapter in {run_dir} (looked for {', '.join(str(p) for p in candidates)}); "
                                "pass the training run's output_dir or --adapter FILE")
    meta = read_adapter(source)["metadata"]  # refuses files that are not adapters
    run_file = run_dir / "run_config.json"
    run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new folder")
    image_size = int(meta["image_size"])
    versions = _versions()
    title = name or f"{meta['tuner']} {meta['backbone']} {run.get('dataset', '')}".strip()
    for sub in ("configs", "models", "docs"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, out_dir / "models" / "model.pt")
    report_file = run_dir / "parameter_report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    metrics_file = run_dir / "eval" / "metrics.json"
    eval_metrics = json.loads(metrics_file.read_text())["metrics"] if metrics_file.is_file() else {}
    metadata = {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by medsam-peft from {run_dir.name}"},
        "monai_version": versions["monai"],
        "pytorch_version": versions["torch"],
        "numpy_version": versions["numpy"],
        "required_packages_version": {k: versions[k] for k in ("medsam_peft", "segment-anything", "pytorch-ignite",
                                                                "pillow")},
        "name": title,
        "task": f"Binary segmentation ({label_name}) with a SAM-family model tuned by {meta['tuner']}",
        "description": f"{meta['backbone']} + {meta['tuner']} adapter ({report.get('trainable', 'n/a')} trainable "
                       f"parameters); prompt: {run.get('prompt', 'none')}. The base weights are fetched by "
                       f"medsam_peft (checkpoint {run.get('checkpoint') or 'release default'}), not stored here.",
        "authors": "medsam_peft users",
        "copyright": "Copyright (c) the model's trainers; code Apache-2.0",
        "data_type": "png",
        "eval_metrics": eval_metrics,
        "intended_use": "Research; not for clinical use",
        "references": ["Zhong et al., Convolution Meets LoRA, ICLR 2024", "Peng et al., SAM-PARSER, AAAI 2024",
                       "Kirillov et al., Segment Anything, ICCV 2023"],
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "RGB", "modality": "any", "num_channels": 3,
                                 "spatial_shape": [image_size, image_size], "dtype": "float32",
                                 "value_range": [0, 1], "is_patch_data": False,
                                 "channel_def": {"0": "R", "1": "G", "2": "B"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 1,
                                 "spatial_shape": [image_size, image_size], "dtype": "float32",
                                 "value_range": [0, 1], "is_patch_data": False,
                                 "channel_def": {"0": "background", "1": label_name}}},
        },
    }
    (out_dir / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (out_dir / "configs" / "inference.json").write_text(json.dumps(inference_config(run, image_size), indent=2))
    license_text = resources.files("medsam_peft").joinpath("resources/LICENSE-Apache-2.0.txt").read_text()
    (out_dir / "LICENSE").write_text(license_text)
    (out_dir / "docs" / "README.md").write_text(
        f"# {title}\n\nA MONAI bundle exported by `medsam-peft export-bundle` from `{run_dir}`.\n\n"
        f"- backbone `{meta['backbone']}`, tuner `{meta['tuner']}`, options `{json.dumps(meta['options'])}`\n"
        f"- input {image_size}x{image_size}, prompt: {run.get('prompt', 'none')}\n"
        f"- trainable parameters: {report.get('trainable', 'n/a')} of {report.get('total', 'n/a')}\n"
        f"- evaluation: {json.dumps(eval_metrics) if eval_metrics else 'not run'}\n\n"
        "```\npip install medsam_peft\n"
        "python -m monai.bundle run --config_file configs/inference.json --bundle_root . --datalist requests.json\n"
        "```\n\n`requests.json` lists `{\"image\": path, \"box\": [x0, y0, x1, y1]}` in image pixels. "
        "The base SAM weights are not in this bundle: medsam_peft fetches and verifies them on first use.\n"
    )
    return out_dir

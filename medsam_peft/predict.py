"""Plain inference for the common case: a tuned adapter, a file or folder of images/volumes, optional prompts ->
masks in an output folder (``medsam-peft predict``).

The model comes from a training run folder (its ``run_config.json`` records the preprocessing), an exported bundle
folder, or an adapter file inside either. Predictions go through ``BundlePredictor``, the MONAI Label server's
code path: the training chain's resize-and-pad, the model at its precision, the probability mapped back to the
input's size and thresholded at 0.5 — the same steps as ``configs/evaluate.json``, so a mask scores as the
evaluation scored it.

Prompts (``--boxes FILE``): a JSON object from input file name (relative to the input folder) to a box or to a MONAI
Label request. 2-D images: ``[x0, y0, x1, y1]`` in image pixels (column, row). Volumes: 3D Slicer's ROI
``[i0, i1, j0, j1, k0, k1]`` in voxel indices, segmented slice by slice over its k range. A request object takes
``roi``, ``foreground``/``background`` points and, for volumes, ``slice``/``propagate`` (see
``medsam_peft.label.predictor``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsam_peft.errors import ConfigError, DataError, MissingFileError
from medsam_peft.export import model_folder_kind
from medsam_peft.label.predictor import BundlePredictor, LabelRequestError
from medsam_peft.transforms.io.array import VOLUME_SUFFIXES, SaveMask, is_volume_path, write_volume
from medsam_peft.tuners.adapter_io import BUNDLE_ADAPTER

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# a training run's adapters, most useful first
RUN_ADAPTERS = ("checkpoints/adapter_best.safetensors", "checkpoints/adapter_best.pt", "adapter_final.safetensors",
                "adapter_final.pt")


def open_model(adapter: str | Path, device: str = "cpu", checkpoint: str | None = None) -> BundlePredictor:
    """The predictor for ``adapter``: a run folder, a bundle folder, or an adapter file inside one of them."""
    path = Path(adapter)
    if not path.exists():
        raise MissingFileError(f"--adapter {path} does not exist; give a training run folder, an exported bundle "
                               "folder or an adapter file (.safetensors) inside one")
    if path.is_dir():
        if model_folder_kind(path) == "bundle":
            return _bundle(path, device, checkpoint)
        found = next((path / name for name in RUN_ADAPTERS if (path / name).is_file()), None)
        if found is None:
            raise MissingFileError(f"run folder {path} holds no adapter ({', '.join(RUN_ADAPTERS)}); train it "
                                   "first or pass the adapter file")
        return BundlePredictor.from_run(path, found, device=device, checkpoint=checkpoint)
    for folder in (path.parent, path.parent.parent):
        if (folder / "run_config.json").is_file():
            return BundlePredictor.from_run(folder, path, device=device, checkpoint=checkpoint)
        if (folder / "configs" / "inference.json").is_file() and (folder / BUNDLE_ADAPTER).resolve() == path.resolve():
            return _bundle(folder, device, checkpoint)
    raise DataError(f"adapter file {path} lies outside a training run or exported bundle folder, so the image "
                    "preprocessing it was trained with is unknown; pass the run folder (with run_config.json) or the "
                    "bundle folder")


def _bundle(folder: Path, device: str, checkpoint: str | None) -> BundlePredictor:
    predictor = BundlePredictor(folder, device=device)
    if checkpoint is not None:
        predictor.checkpoint = checkpoint
    return predictor


def list_inputs(source: str | Path) -> list[Path]:
    """A file, or the images and volumes directly inside a folder (sorted); a folder of DICOM files is one volume."""
    source = Path(source)
    if not source.exists():
        raise MissingFileError(f"--input {source} does not exist")
    if source.is_file():
        return [source]
    entries = sorted(p for p in source.iterdir() if not p.name.startswith("."))
    wanted = [p for p in entries if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES + VOLUME_SUFFIXES)]
    if wanted:
        return wanted
    if any(p.is_file() and p.suffix.lower() in (".dcm", "") for p in entries):
        return [source]  # a DICOM series
    raise DataError(f"--input {source} holds no images ({', '.join(IMAGE_SUFFIXES)}) or volumes "
                    f"({', '.join(VOLUME_SUFFIXES)}, DICOM folder)")


def input_key(path: Path, source: Path) -> str:
    """How ``--boxes`` names an input: its path relative to the input folder (the file name for one file)."""
    return path.name if path == source else path.relative_to(source).as_posix()


def read_prompts(boxes_file: str | Path, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``--boxes``: {input name: box list or request object} -> {input name: request params}, every input covered
    and every entry naming an input (checked before the first prediction)."""
    boxes_file = Path(boxes_file)
    try:
        raw = json.loads(boxes_file.read_text())
    except FileNotFoundError as err:
        raise MissingFileError(f"--boxes {boxes_file} does not exist") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"--boxes {boxes_file} is not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise DataError(f"--boxes {boxes_file} must hold a JSON object {{\"<input file name>\": [x0, y0, x1, y1], ...}}")
    keys = list(keys)
    missing, unknown = [k for k in keys if k not in raw], sorted(set(raw) - set(keys))
    if unknown:
        raise DataError(f"--boxes {boxes_file} names {unknown[:5]}, not among the inputs ({keys[:5]}"
                        f"{' ...' if len(keys) > 5 else ''}); keys are file names relative to --input")
    if missing:
        raise DataError(f"--boxes {boxes_file} has no prompt for {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                        "give every input a box")
    prompts = {}
    for key in keys:
        value = raw[key]
        if isinstance(value, list):
            prompts[key] = {"roi": value}
        elif isinstance(value, dict):
            prompts[key] = value
        else:
            raise DataError(f"--boxes {boxes_file}: the entry for {key!r} must be a box list or a request object, "
                            f"got {type(value).__name__}")
    return prompts


@dataclass
class Prediction:
    """One written mask."""

    input: str
    output: str
    foreground: int  # pixels or voxels
    shape: list[int]


def output_path(path: Path, output_dir: Path, volume: bool, key: str) -> Path:
    stem = Path(key).as_posix().replace("/", "__")
    for suffix in sorted(IMAGE_SUFFIXES + VOLUME_SUFFIXES, key=len, reverse=True):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return output_dir / (f"{stem}_pred.nii.gz" if volume else f"{stem}_pred.png")


def predict(adapter: str | Path, source: str | Path, output_dir: str | Path, boxes: str | Path | None = None,
            prompt_free: bool = False, device: str = "cpu", checkpoint: str | None = None,
            progress: Callable[[Iterable], Iterable] | None = None) -> list[Prediction]:
    """Segment every input of ``source`` with the model of ``adapter`` and write ``<stem>_pred.png`` (2-D, {0, 255}
    at the image's size; class ids for a multi-class bundle) or ``<stem>_pred.nii.gz`` (volumes, on the input's grid) plus ``predictions.json``."""
    source, output_dir = Path(source), Path(output_dir)
    predictor = open_model(adapter, device, checkpoint)
    inputs = list_inputs(source)
    keys = [input_key(p, source) for p in inputs]
    if boxes is not None and prompt_free:
        raise ConfigError("give --boxes or --prompt-free, not both")
    if boxes is None and not predictor.prompt_free:
        raise ConfigError(f"model {predictor.name!r} was trained with {predictor.prompt} prompts: give --boxes FILE "
                          "({\"<input file name>\": [x0, y0, x1, y1]}, volumes: [i0, i1, j0, j1, k0, k1])")
    if prompt_free and not predictor.prompt_free:
        raise ConfigError(f"--prompt-free: model {predictor.name!r} was trained with {predictor.prompt} prompts and "
                          "segments nothing without them; give --boxes FILE")
    if boxes is not None and predictor.prompt_free:
        raise ConfigError(f"--boxes: model {predictor.name!r} was trained without prompts and ignores them; drop "
                          "--boxes (or pass --prompt-free)")
    prompts = read_prompts(boxes, keys) if boxes is not None else {k: {} for k in keys}
    targets = [output_path(p, output_dir, is_volume_path(p), k) for p, k in zip(inputs, keys)]
    clashes = sorted({t.name for t in targets if targets.count(t) > 1})
    if clashes:
        raise DataError(f"inputs of {source} would share the output names {clashes[:3]}; rename them")
    output_dir.mkdir(parents=True, exist_ok=True)
    predictor.model()  # load (and report a bad adapter or checkpoint) before the first file
    done = []
    for path, key, target in (progress or (lambda x: x))(list(zip(inputs, keys, targets))):
        try:
            mask, _, affine = predictor.segment_file(path, prompts[key])
        except LabelRequestError as err:  # a bad prompt or unreadable file: name the input it came with
            raise DataError(f"{source / key if source.is_dir() else source}: {err}") from err
        if affine is None:  # 2-D: the predictor returns MONAI's (W, H) grid; a multi-class model's class ids
            SaveMask(label_map=predictor.semantic)(np.ascontiguousarray(mask.T), target)
        else:
            write_volume(mask, affine, target)
        done.append(Prediction(key, target.name, int((mask > 0).sum()), [int(n) for n in mask.shape]))
    from medsam_peft.utils.atomic_io import write_json_atomic

    write_json_atomic(output_dir / "predictions.json", {
        "adapter": str(predictor.adapter_file), "model": predictor.name, "prompt": predictor.prompt,
        "predictions": [vars(p) for p in done]})
    return done


__all__ = ["Prediction", "list_inputs", "open_model", "predict", "read_prompts"]

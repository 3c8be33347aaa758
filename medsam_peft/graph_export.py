"""``medsam-peft export``: a tuned model as a TorchScript and/or ONNX graph, checked against the eager model.

Mergeable tuners (LoRA, SAM-PARSER, ...: every tuner layer ``supports_merge``) are folded into the base weights first,
so the graph is a plain SAM; Conv-LoRA (its gate picks an expert per input) is traced unmerged — while a graph is
recorded its layer runs every expert and gathers the gate's pick, so the graph is valid for any input.

The graph is the model's fp32 forward on a preprocessed image: ``image`` (B, 3, S, S) in [0, 1], resized so its
longer side is S and zero-padded (``medsam_peft.transforms.sam_preprocessing``), plus, for box-prompted models,
``boxes`` (B, 4) XYXY in those S×S pixels; output ``masks`` (B, 1, S, S) logits. Batch and shapes are fixed at the
traced ones. Clicks are not part of the graph. Each export is run on a check input (a real image with ``example``) and
on its mirror image, and must match the eager, unmerged model within ``atol``, else the files are removed and ``ExportMismatchError``
says by how much.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from medsam_peft.errors import ConfigError, MedsamPeftError
from medsam_peft.predict import open_model
from medsam_peft.utils.atomic_io import write_json_atomic

FORMATS = ("torchscript", "onnx")


class ExportMismatchError(MedsamPeftError, RuntimeError):
    """An exported graph does not reproduce the eager model on the check input."""


class BoxPromptedSam(nn.Module):
    """``(image, boxes) -> masks``: the positional forward a graph exporter records."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.model(image, boxes)


class PromptFreeSam(nn.Module):
    """``image -> masks`` for models trained without prompts."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)


def check_inputs(image_size: int, prompt_free: bool, example: str | os.PathLike | None = None,
                 box: list[float] | None = None, squash: bool = False) -> tuple[torch.Tensor, ...]:
    """The check input: ``example`` preprocessed as in training (else a seeded random image) and, for box models,
    ``box`` in the example's pixels mapped to the model's frame (else the middle half of the image)."""
    from medsam_peft.transforms import ResizeLongestSide, ScaleBox, ScaleIntensityByDtype
    from medsam_peft.transforms.io.array import LoadImage2D

    if example is not None:
        loaded = ScaleIntensityByDtype()(LoadImage2D()(example))
        height, width = loaded.shape[1:]
        image = ResizeLongestSide(image_size, "bilinear", squash)(loaded).as_tensor()[None].float()
    else:
        height = width = image_size
        image = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    if prompt_free:
        return (image,)
    if box is None:
        box = [width / 4, height / 4, 3 * width / 4, 3 * height / 4]
    if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
        raise ConfigError(f"--box must be x0 y0 x1 y1 with x1 > x0 and y1 > y0, got {box}")
    return image, ScaleBox(image_size, squash)(box, (height, width))[None].float()


def _export_torchscript(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> Any:
    import warnings

    with warnings.catch_warnings():
        # the tracer's notes on Python values it records as constants, and torch's deprecation of TorchScript
        # (which MONAI's model zoo still ships)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*is deprecated.*")
        traced = torch.jit.trace(module, inputs, check_trace=False)
        tmp = path.with_name(f".{path.name}.tmp")
        traced.save(str(tmp))
        os.replace(tmp, path)
        loaded = torch.jit.load(str(path))
    return lambda *args: loaded(*args)


def _export_onnx(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> Any:
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as err:
        raise MedsamPeftError(f"ONNX export needs the export extra ({err.name} is not installed): "
                              "pip install 'medsam_peft[export]'") from err
    names = ["image", "boxes"][: len(inputs)]
    tmp = path.with_name(f".{path.name}.tmp")
    torch.onnx.export(module, inputs, str(tmp), input_names=names, output_names=["masks"], dynamo=True,
                      external_data=False, verbose=False)
    os.replace(tmp, path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda *args: torch.from_numpy(session.run(None, {n: a.numpy() for n, a in zip(names, args)})[0])


EXPORTERS = {"torchscript": ("model.ts", _export_torchscript), "onnx": ("model.onnx", _export_onnx)}


def export_graphs(adapter: str | os.PathLike, output_dir: str | os.PathLike, formats: tuple[str, ...] = FORMATS,
                  merge: str = "auto", checkpoint: str | None = None, example: str | os.PathLike | None = None,
                  box: list[float] | None = None, atol: float = 1e-4) -> dict[str, Any]:
    """Export the model of ``adapter`` (a run folder, bundle folder or adapter file inside one) to ``formats``.

    ``merge``: "auto" (merge when every tuner layer can), "yes" (refuse if it cannot) or "no". Writes
    ``model.ts`` / ``model.onnx`` and ``export.json`` (inputs, merge, check results) into ``output_dir``.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"--format must be among {list(FORMATS)}, got {list(formats)}")
    if merge not in ("auto", "yes", "no"):
        raise ConfigError(f"--merge must be auto, yes or no, got {merge!r}")
    predictor = open_model(adapter, "cpu", checkpoint)
    tuned = predictor.model().float().eval()
    mergeable = all(layer.supports_merge for _, layer in tuned.tuner_layers())
    if merge == "yes" and not mergeable:
        raise ConfigError(f"--merge yes: the {tuned.config.tuner_type} adapter cannot be folded into the base weights; "
                          "export it unmerged (--merge auto or no)")
    merged = mergeable and merge != "no"
    graph_model = copy.deepcopy(tuned).merge_and_unload().eval() if merged else tuned
    wrapper = PromptFreeSam if predictor.prompt_free else BoxPromptedSam
    inputs = check_inputs(predictor.image_size, predictor.prompt_free, example, box, predictor.squash)
    # a second input the graph was not recorded on (mirrored image and box): a graph that baked in a data-dependent
    # branch of the first fails here
    size = predictor.image_size
    mirrored = (inputs[0].flip(-1),) + (() if predictor.prompt_free else
                                        (torch.stack([size - inputs[1][:, 2], inputs[1][:, 1], size - inputs[1][:, 0],
                                                      inputs[1][:, 3]], dim=1),))
    with torch.no_grad():
        expected = [wrapper(tuned)(*inputs), wrapper(tuned)(*mirrored)]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checks: dict[str, Any] = {}
    for name in formats:
        filename, exporter = EXPORTERS[name]
        path = output_dir / filename
        with torch.no_grad():
            run = exporter(wrapper(graph_model).eval(), inputs, path)
            got = [run(*inputs), run(*mirrored)]
        difference = max(float((g.float() - e).abs().max()) for g, e in zip(got, expected))
        agreement = min(float(((g > 0) == (e > 0)).float().mean()) for g, e in zip(got, expected))
        checks[name] = {"file": filename, "max_abs_diff": difference, "mask_agreement": agreement,
                        "bytes": path.stat().st_size}
        if not np.isfinite(difference) or difference > atol:
            path.unlink(missing_ok=True)
            raise ExportMismatchError(f"the {name} export differs from the eager model by {difference:.3g} (> --atol "
                                      f"{atol:g}) on the check inputs; {filename} was removed")
    summary = {
        "adapter": str(predictor.adapter_file), "backbone": tuned.model.backbone, "tuner": tuned.config.tuner_type,
        "merged": merged, "image_size": predictor.image_size, "prompt": predictor.prompt,
        "inputs": {"image": [1, 3, predictor.image_size, predictor.image_size],
                   **({} if predictor.prompt_free else {"boxes": [1, 4]})},
        "outputs": {"masks": list(expected[0].shape)},
        "check_inputs": [str(example) if example is not None else "random image (seed 0)", "the same, mirrored"],
        "atol": atol,
        "checks": checks,
    }
    write_json_atomic(output_dir / "export.json", summary)
    return summary


__all__ = ["BoxPromptedSam", "ExportMismatchError", "PromptFreeSam", "check_inputs", "export_graphs"]

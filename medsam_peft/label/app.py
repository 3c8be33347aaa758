"""MONAI Label integration: infer tasks over exported bundles and the app behaviour shared by ``apps/medsam_label``.

Needs the optional extra ``pip install -e .[label]`` (monailabel 0.8.5 with the pins that make it import beside
monai 1.6.1). MONAI Label answers every exception with a 500; ``MedSamLabelMixin.infer`` turns what is the caller's
mistake into 4xx replies (``fastapi.HTTPException``) and keeps the server serving.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from medsam_peft.label.predictor import BundleError, BundlePredictor, LabelRequestError
from medsam_peft.transforms.volume import write_nifti

logger = logging.getLogger(__name__)


class SamBundleInferTask(InferTask):
    """One exported bundle as a MONAI Label model: interactive (box ``roi`` and ``foreground``/``background``
    points) or, for bundles trained prompt-free, automatic (no prompt needed). Returns a PNG for 2-D images and a
    NIfTI for volumes, on the input's grid."""

    def __init__(self, predictor: BundlePredictor) -> None:
        automatic = predictor.prompt_free
        super().__init__(
            type=InferType.SEGMENTATION if automatic else InferType.ANNOTATION,
            labels=predictor.labels,
            dimension=2,
            description=(f"{predictor.metadata.get('name', predictor.name)}: "
                         + ("automatic (prompt-free)" if automatic else "box 'roi' and/or foreground/background "
                            "points; volumes slice by slice")),
            config={"device": "cpu"},
        )
        self.predictor = predictor

    def is_valid(self) -> bool:
        return self.predictor.error is None  # a bundle that failed to load is not offered in /info/

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        mask, details, affine = self.predictor.segment_file(request["image"], request)
        fd, out = tempfile.mkstemp(suffix=".png" if affine is None else ".nii.gz", prefix="medsam_label_")
        os.close(fd)
        if affine is None:  # 2-D: MONAI's (x, y) array back to a (rows, cols) PNG
            from PIL import Image

            Image.fromarray(mask.T * 255).save(out)
        else:
            write_nifti(mask, affine, out)
        label = next(iter(self.predictor.labels), "foreground")
        return out, {"model": self.predictor.name, "label_names": {label: 1}, **details}


def infer_tasks(app_dir: str, conf: dict[str, str]) -> dict[str, InferTask]:
    """``--conf models a,b``: bundle folders ``<app_dir>/model/<name>`` or paths; a bundle that cannot be read or
    loaded is kept as a model that answers 409 with the reason, so one bad bundle does not take the server down.
    ``--conf preload false`` defers loading to the first request; ``--conf device cuda`` picks the device."""
    names = [n.strip() for n in conf.get("models", "").split(",") if n.strip()]
    if not names:
        raise ValueError("no models: start the server with --conf models <bundle name or folder>[,...] "
                         "(bundles exported with `medsam-peft export-bundle`)")
    tasks: dict[str, InferTask] = {}
    for entry in names:
        folder = Path(entry) if os.sep in entry or Path(entry).is_absolute() else Path(app_dir) / "model" / entry
        try:
            predictor = BundlePredictor(folder, device=conf.get("device", "cpu"))
            tasks[folder.name] = SamBundleInferTask(predictor)
        except BundleError as err:
            logger.error("%s", err)
            tasks[folder.name] = BrokenBundleTask(folder.name, str(err))
        # Loaded at start by default, so that /info/ offers only models that work and the first click is fast.
        if conf.get("preload", "true").lower() == "true" and isinstance(tasks[folder.name], SamBundleInferTask):
            try:
                tasks[folder.name].predictor.model()
            except BundleError as err:
                logger.error("%s", err)
    return tasks


class BrokenBundleTask(InferTask):
    """Stands in for a bundle that cannot be read, answering each request with why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(type=InferType.OTHERS, labels=None, dimension=2, description=f"unavailable: {reason}")
        self.reason = reason

    def is_valid(self) -> bool:
        return False  # not listed in /info/

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        raise BundleError(self.reason)


def answer_infer(app: Any, infer, request: dict[str, Any], datastore=None) -> dict[str, Any]:
    """Run MONAI Label's ``infer`` with the caller's mistakes answered as 4xx instead of 500."""
    model = request.get("model")
    if model not in app._infers:
        raise HTTPException(status_code=404, detail=f"unknown model {model!r}; this server has {sorted(app._infers)}")
    image = request.get("image")
    if isinstance(image, str) and not os.path.exists(image):
        store = datastore or app.datastore()
        if not image or not store.get_image_uri(image):
            raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore; upload it with "
                                                        "PUT /datastore/image or send it as the 'file' field")
    try:
        return infer(request, datastore)
    except LabelRequestError as err:
        raise HTTPException(status_code=err.status, detail=str(err)) from err
    except BundleError as err:
        raise HTTPException(status_code=409, detail=str(err)) from err


__all__ = ["BrokenBundleTask", "SamBundleInferTask", "answer_infer", "infer_tasks"]

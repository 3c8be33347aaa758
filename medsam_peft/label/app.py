"""MONAI Label integration: infer tasks over exported bundles and the app behaviour shared by ``apps/medsam_label``.

Needs the optional extra ``pip install -e .[label]`` (monailabel 0.8.5 with the pins that make it import beside
monai 1.6.1). MONAI Label answers every exception with a 500 and reads any server path given as ``image``;
``guard_infer_endpoint`` and ``answer_infer`` make every HTTP input untrusted: only datastore ids and uploads are
read, malformed ``params`` and the caller's other mistakes get a 4xx with the reason, and the server keeps serving.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from medsam_peft.label.predictor import BundleError, BundlePredictor, LabelRequestError
from medsam_peft.transforms.io.array import is_volume_path, write_volume
from medsam_peft.utils.cpu_allocator import configure_cpu_allocator

logger = logging.getLogger(__name__)

# Result formats a caller may ask for with params["result_extension"] (3D Slicer and OHIF send ".nrrd").
VOLUME_RESULTS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd")
IMAGE_RESULTS = (".png",)
# params keys that would replace what the URL and the upload decided (request.update(params) in MONAI Label).
RESERVED_PARAMS = ("image", "model", "session", "file")

# Set by the guarded endpoint for one request: True when ``image`` is the server's own path of an upload (a file
# field or a session), which is the only case a path, not a datastore id, may reach the infer task.
_SERVER_PATH = contextvars.ContextVar("medsam_peft_server_path", default=False)


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
                         + (f"automatic multi-class ({', '.join(predictor.labels)})" if predictor.semantic else
                            "automatic (prompt-free)" if automatic else
                            ("click-trained: " if predictor.prompt == "interactive" else "")
                            + "box 'roi' and/or foreground/background points; volumes slice by slice or propagated "
                              "from one prompted slice")),
            config={"device": "cpu"},
        )
        self.predictor = predictor

    def is_valid(self) -> bool:
        return self.predictor.error is None  # a bundle that failed to load is not offered in /info/

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        requested = request.get("result_extension")
        suffix = result_suffix(requested)  # checked before any work
        volume = is_volume_path(Path(request["image"]))
        if not volume and requested not in (None, "", *IMAGE_RESULTS):
            raise LabelRequestError(422, f"result_extension {requested!r} is for volumes; a 2-D image's result is one "
                                         f"of {list(IMAGE_RESULTS)}")
        if volume and requested in IMAGE_RESULTS:
            raise LabelRequestError(422, f"result_extension {requested!r} is for 2-D images; a volume's result is one "
                                         f"of {list(VOLUME_RESULTS)}")
        mask, details, affine = self.predictor.segment_file(request["image"], request)
        label, value = next(iter(self.predictor.labels.items()), ("foreground", 1))
        if affine is None:
            suffix = ".png"
        fd, out = tempfile.mkstemp(suffix=suffix, prefix="medsam_label_")
        os.close(fd)
        if self.predictor.semantic:  # class ids already, as /info/ announces them
            labelled, names = mask.astype("uint8"), dict(self.predictor.labels)
        else:
            labelled, names = (mask > 0).astype("uint8") * value, {label: value}  # the value /info/ announces (1)
        if affine is None:  # 2-D: MONAI's (x, y) array back to a (rows, cols) PNG
            from PIL import Image

            Image.fromarray(labelled.T).save(out)
        else:
            write_volume(labelled, affine, out)
        return out, {"model": self.predictor.name, "label_names": names, **details}


def result_suffix(requested: Any) -> str:
    """The result file's suffix: the caller's ``result_extension`` when it is one this app writes (volumes: NIfTI,
    NRRD; 2-D: PNG), NIfTI by default. Anything else (a path, an unknown format) is a 422, never a file name."""
    if requested in (None, ""):
        return ".nii.gz"
    if requested not in VOLUME_RESULTS + IMAGE_RESULTS:
        raise LabelRequestError(422, f"result_extension must be one of {list(VOLUME_RESULTS + IMAGE_RESULTS)}, got "
                                     f"{str(requested)[:80]!r}")
    return ".nrrd" if requested == ".seg.nrrd" else str(requested)


def infer_tasks(app_dir: str, conf: dict[str, str]) -> dict[str, InferTask]:
    """``--conf models a,b``: bundle folders ``<app_dir>/model/<name>`` or paths; a bundle that cannot be read or
    loaded is kept as a model that answers 409 with the reason, so one bad bundle does not take the server down.
    ``--conf preload false`` defers loading to the first request; ``--conf device cuda`` picks the device."""
    names = [n.strip() for n in conf.get("models", "").split(",") if n.strip()]
    # as in training and evaluation: on the CPU, freed memory is kept for the next request (utils/cpu_allocator.py)
    configure_cpu_allocator(conf.get("cpu_allocator", "reuse"), conf.get("device", "cpu"))
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


def guard_infer_endpoint() -> None:
    """Check ``POST /infer/{model}`` requests before MONAI Label handles them (idempotent).

    MONAI Label's endpoint function parses ``params`` with ``json.loads`` (a 500 on bad JSON), lets ``params`` replace
    ``image``, and its app reads any existing path given as ``image``. It offers no hook before that, so the app
    wraps ``monailabel.endpoints.infer.run_inference``, which the route calls by name on each request.
    """
    from monailabel.endpoints import infer as endpoint

    original = endpoint.run_inference
    if getattr(original, "medsam_peft_guard", False):
        return

    def run_inference(background_tasks, model, image="", session_id="", params="{}", file=None, label=None,
                      output=None):
        parsed = parse_params(params)
        server_path = bool(file) or bool(session_id)
        token = _SERVER_PATH.set(server_path)
        try:
            return original(background_tasks, model, image, session_id, json.dumps(parsed), file, label, output)
        finally:
            _SERVER_PATH.reset(token)

    run_inference.medsam_peft_guard = True
    endpoint.run_inference = run_inference


def parse_params(params: Any) -> dict[str, Any]:
    """The ``params`` form field as a dict; malformed JSON, a non-object, or keys that would replace the request's
    image or model are 422s."""
    if params in (None, ""):
        return {}
    try:
        parsed = json.loads(params) if isinstance(params, (str, bytes)) else params
    except json.JSONDecodeError as err:
        raise HTTPException(status_code=422, detail=f"params is not valid JSON ({err.msg} at line {err.lineno} column "
                                                    f"{err.colno}); send a JSON object such as {{\"roi\": [x0, y0, x1, "
                                                    "y1]}") from None
    if not isinstance(parsed, dict):
        raise HTTPException(status_code=422, detail=f"params must be a JSON object, got {type(parsed).__name__}")
    reserved = [k for k in RESERVED_PARAMS if k in parsed]
    if reserved:
        raise HTTPException(status_code=422, detail=f"params may not set {reserved[0]!r}: the image comes from the URL "
                                                    "(a datastore id) or the uploaded 'file' field")
    return parsed


def _not_in_datastore(image: Any) -> HTTPException:
    shown = str(image)[:80]
    return HTTPException(status_code=404, detail=f"image {shown!r} is not in the datastore; send a datastore id (GET "
                                                 "/datastore/?output=all lists them), upload it with PUT "
                                                 "/datastore/image, or send it as the 'file' field")


def answer_infer(app: Any, infer, request: dict[str, Any], datastore=None) -> dict[str, Any]:
    """Run MONAI Label's ``infer`` with only datastore images and uploads readable, and the caller's mistakes
    answered as 4xx instead of 500."""
    model = request.get("model")
    if model not in app._infers:
        raise HTTPException(status_code=404, detail=f"unknown model {model!r}; this server has {sorted(app._infers)}")
    image = request.get("image")
    if not isinstance(image, str):
        raise _not_in_datastore(image)
    store = datastore or app.datastore()
    if _SERVER_PATH.get():
        if not os.path.isfile(image) and not os.path.isdir(image):
            raise _not_in_datastore(Path(image).name)
    else:
        # A datastore id and nothing else: the same reply whether or not some server path of that name exists.
        uri = store.get_image_uri(image) if image and image in store.list_images() else ""
        if not uri or not os.path.exists(uri):
            raise _not_in_datastore(image)
        # The datastore's own path: MONAI Label would otherwise first try the id as a path relative to its cwd.
        request = {**request, "image": uri}
    try:
        result_suffix(request.get("result_extension"))
        return infer(request, datastore)
    except LabelRequestError as err:
        raise HTTPException(status_code=err.status, detail=str(err)) from err
    except BundleError as err:
        raise HTTPException(status_code=409, detail=str(err)) from err


def served_predictors(infers: dict[str, InferTask]) -> dict[str, BundlePredictor]:
    """The predictors of the bundles that load (broken bundles get no train or scoring task)."""
    return {name: task.predictor for name, task in infers.items()
            if isinstance(task, SamBundleInferTask) and task.is_valid()}


def train_tasks(app_dir: str, conf: dict[str, str], infers: dict[str, InferTask]) -> dict[str, Any]:
    """A ``train`` task per served bundle (``medsam_peft.label.train``), its runs under ``<app_dir>/train/<model>``.
    ``--conf configs DIR`` names medsam_peft's configs/ folder when the package is not a source checkout."""
    from medsam_peft.label.train import SamBundleTrainTask

    return {name: SamBundleTrainTask(predictor, Path(app_dir) / "train" / name, conf.get("configs"),
                                     device=conf.get("device", "cpu"))
            for name, predictor in served_predictors(infers).items()}


def guard_train_endpoint(app_instance) -> None:
    """Check ``POST /train/{model}`` before MONAI Label queues it (idempotent): an unknown model is a 404 and bad
    settings a 422 with the reason, answered to the caller instead of failing later in the background process."""
    from monailabel.endpoints import train as endpoint

    from medsam_peft.label.train import parse_train_request

    original = endpoint.run_model
    if getattr(original, "medsam_peft_guard", False):
        return

    def run_model(model, params=None, run_sync=False, enqueue=False):
        trainers = app_instance()._trainers
        if model not in trainers:
            raise HTTPException(status_code=404, detail=f"no train task for model {str(model)[:80]!r}; this server "
                                                        f"trains {sorted(trainers)}")
        if params is not None and not isinstance(params, dict):
            raise HTTPException(status_code=422, detail="params must be a JSON object")
        try:
            parse_train_request(params or {})
        except LabelRequestError as err:
            raise HTTPException(status_code=err.status, detail=str(err)) from err
        return original(model, params, run_sync, enqueue)

    run_model.medsam_peft_guard = True
    endpoint.run_model = run_model


def answer_task(task, request: dict[str, Any]) -> dict[str, Any]:
    """MONAI Label's ``train``/``scoring`` with the caller's mistakes as 4xx and a task that cannot run as 409 (what a
    synchronous ``run_sync`` request sees; an unknown task or method is a 404, not MONAI Label's 500)."""
    from monailabel.interfaces.exception import MONAILabelException

    from medsam_peft.errors import DataError
    from medsam_peft.label.train import TrainRunError

    try:
        return task(request)
    except LabelRequestError as err:
        raise HTTPException(status_code=err.status, detail=str(err)) from err
    except (DataError, BundleError, TrainRunError) as err:
        raise HTTPException(status_code=409, detail=str(err)) from err
    except MONAILabelException as err:
        raise HTTPException(status_code=404, detail=err.msg) from err


__all__ = ["BrokenBundleTask", "SamBundleInferTask", "answer_infer", "answer_task", "guard_infer_endpoint",
           "guard_train_endpoint", "infer_tasks", "parse_params", "result_suffix", "served_predictors", "train_tasks"]

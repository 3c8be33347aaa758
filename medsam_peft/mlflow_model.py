"""A tuned model as an MLflow model: a ``pyfunc`` that predicts masks from images and box prompts, logged into the
training run's MLflow run and, if asked, registered in the model registry (``medsam-peft log-model``).

The MLflow model holds the exported bundle (``medsam-peft export-bundle``: adapter + configs, a few MB) as its
artifact; ``load_context`` serves it through ``BundlePredictor``, the same code path as ``medsam-peft predict`` and the
MONAI Label server, so a mask from ``mlflow.pyfunc.load_model(uri).predict(...)`` is the mask ``predict`` writes.

Input: a pandas DataFrame (or list of dicts) with ``image`` — the base64 of an image file's bytes (PNG, JPEG, TIFF: what
a REST client sends to ``mlflow models serve``), or a file path inside the folders listed in
``$MEDSAM_PEFT_PYFUNC_IMAGE_DIRS`` (unset: no path is read) — and, for box-prompted models, ``box``
``[x0, y0, x1, y1]`` in the image's pixels. Output: a DataFrame with ``mask`` (base64 PNG, {0, 255}, the image's size)
and ``pixels`` (foreground count).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import Array

from medsam_peft.engines.handlers.mlflow_handler import OUTPUT_DIR_TAG
from medsam_peft.errors import ConfigError, DataError, MissingFileError
from medsam_peft.export import export_bundle, model_folder_kind
from medsam_peft.label.predictor import BundlePredictor, LabelRequestError
from medsam_peft.version import __version__

MODEL_NAME = "model"  # the MLflow model's name inside the run (its artifact folder)
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "image"), ColSpec(Array("double"), "box", required=False)]),
    outputs=Schema([ColSpec("string", "mask"), ColSpec("long", "pixels")]),
)


@contextlib.contextmanager
def _quiet_mlflow():
    """MLflow's notes while logging (pickled model, no input example, artifact progress bars): one line of ours
    says what was logged."""
    logger = logging.getLogger("mlflow")
    level, bar = logger.level, os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    logger.setLevel(logging.ERROR)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


class TunedSamModel(mlflow.pyfunc.PythonModel):
    """pyfunc over an exported bundle: {image, box} rows -> {mask, pixels} rows."""

    def load_context(self, context: Any) -> None:
        self.predictor = BundlePredictor(context.artifacts["bundle"])
        self.predictor.model()

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would derive a signature from them
        import pandas as pd

        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        return pd.DataFrame([predict_row(self.predictor, row, i) for i, row in enumerate(rows)])


# Folders whose files a row may name by path (os.pathsep-separated). Unset, only base64 images are read: a model
# served over HTTP (`mlflow models serve`) must not open whatever path a caller sends.
IMAGE_DIRS_ENV = "MEDSAM_PEFT_PYFUNC_IMAGE_DIRS"


def _readable_path(value: str) -> Path | None:
    """``value`` as a file inside one of the folders of ``IMAGE_DIRS_ENV`` (symlinks resolved), else None."""
    roots = [Path(r).resolve() for r in os.environ.get(IMAGE_DIRS_ENV, "").split(os.pathsep) if r]
    if not roots or len(value) >= 4096:
        return None
    try:
        path = Path(value).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return path if path.is_file() and any(path.is_relative_to(root) for root in roots) else None


def _image_file(value: Any, index: int, folder: Path) -> Path:
    """A row's ``image``: base64 image bytes written to a temporary file, or a path inside ``IMAGE_DIRS_ENV``."""
    if not isinstance(value, str) or not value:
        raise DataError(f"row {index}: 'image' must be base64-encoded image bytes (or a path, see {IMAGE_DIRS_ENV})")
    readable = _readable_path(value)
    if readable is not None:
        return readable
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise DataError(f"row {index}: 'image' is not base64 image bytes; paths are read only inside the folders "
                        f"listed in {IMAGE_DIRS_ENV}") from err
    path = folder / f"row{index}.img"
    path.write_bytes(data)
    return path


def predict_row(predictor: BundlePredictor, row: dict[str, Any], index: int) -> dict[str, Any]:
    from PIL import Image

    box = row.get("box")
    if isinstance(box, np.ndarray):
        box = box.tolist()
    params = {} if box is None or (isinstance(box, float) and np.isnan(box)) else {"roi": box}
    with tempfile.TemporaryDirectory() as tmp:
        path = _image_file(row.get("image"), index, Path(tmp))
        try:
            mask, _, affine = predictor.segment_file(path, params)
        except LabelRequestError as err:
            raise DataError(f"row {index}: {err}") from err
    if affine is not None:
        raise DataError(f"row {index}: the MLflow model segments 2-D images; use medsam-peft predict for volumes")
    buffer = io.BytesIO()
    Image.fromarray((np.ascontiguousarray(mask.T) > 0).astype(np.uint8) * 255).save(buffer, format="PNG")
    return {"mask": base64.b64encode(buffer.getvalue()).decode("ascii"), "pixels": int(mask.sum())}


def decode_mask(encoded: str) -> np.ndarray:
    """A ``mask`` value of the pyfunc's output as a (H, W) bool array."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded)))) > 127


def _training_run_id(client: Any, run_dir: Path) -> str | None:
    """The MLflow run the trainer kept for ``run_dir`` (tag ``medsam_peft.output_dir``), newest first."""
    wanted = {str(run_dir), str(run_dir.resolve())}
    experiments = [e.experiment_id for e in client.search_experiments()]
    # matched in Python: the tag holds --output_dir as the trainer was given it, possibly relative
    for run in client.search_runs(experiments, order_by=["attributes.start_time DESC"]) if experiments else []:
        tag = run.data.tags.get(OUTPUT_DIR_TAG)
        if tag is not None and (tag in wanted or str(Path(tag).resolve()) in wanted):
            return run.info.run_id
    return None


def log_tuned_model(source: str | os.PathLike, tracking_uri: str | None = None, registered_name: str | None = None,
                    run_id: str | None = None, label: str = "foreground") -> dict[str, Any]:
    """Log the model of ``source`` (a training run folder, or an exported bundle folder) as an MLflow pyfunc.

    A run folder's model goes into its own training run (found by its ``medsam_peft.output_dir`` tag in the run's
    ``mlruns.db`` unless ``tracking_uri`` says otherwise); a bundle's into ``run_id`` or a new run. With
    ``registered_name`` the model is registered (a new version). Returns ``model_uri``, ``run_id`` and ``version``.
    """
    source = Path(source)
    if not source.is_dir():
        raise MissingFileError(f"{source} is not a folder: give a training run folder or an exported bundle folder")
    is_run = model_folder_kind(source) == "run"
    if tracking_uri is None:
        if not is_run or not (source / "mlruns.db").is_file():
            raise ConfigError("give --tracking-uri (e.g. sqlite:///mlruns.db or http://host:5000): "
                              f"{source} has no mlruns.db")
        tracking_uri = "sqlite:///" + str((source / "mlruns.db").resolve())
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    if run_id is None and is_run:
        run_id = _training_run_id(client, source)
        if run_id is None:
            raise DataError(f"no MLflow run of {source} in {tracking_uri}; pass --run-id or --tracking-uri")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = source
        if is_run:
            bundle = export_bundle(source, Path(tmp) / "bundle", label_name=label)
        with mlflow.start_run(run_id=run_id) as run, _quiet_mlflow():
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME, python_model=TunedSamModel(), artifacts={"bundle": str(bundle)},
                signature=SIGNATURE, registered_model_name=registered_name,
                # the package runs the model; the rest of its requirements come with it
                pip_requirements=[f"medsam_peft=={__version__}"],
            )
            run_id = run.info.run_id
    version = getattr(info, "registered_model_version", None)
    return {"model_uri": info.model_uri, "run_id": run_id, "version": version, "tracking_uri": tracking_uri}


__all__ = ["TunedSamModel", "decode_mask", "log_tuned_model", "predict_row"]

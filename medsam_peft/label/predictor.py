"""Prompted prediction with an exported bundle (base backbone + adapter), independent of the MONAI Label server.

``BundlePredictor`` reads a folder written by ``medsam-peft export-bundle`` and answers one request: an image file
(2-D PNG/JPG/TIFF or a volume: NIfTI, MHA/NRRD, DICOM folder), prompts in MONAI Label's convention — indices of the
image as MONAI loads it, i.e. ``[x, y]`` (column, row) for 2-D images and voxel indices ``[i, j, k]`` for volumes —
and returns a binary mask on the input's grid. Volumes are segmented slice by slice along the last axis, each slice
oriented and scaled as ``medsam-peft prepare`` wrote the training slices (``slice_to_image``, ``to_uint8``).

Every problem with a request raises ``LabelRequestError`` with an HTTP status (4xx) and a message saying what to fix;
problems with the bundle raise ``BundleError`` (the server answers 409 for that model and keeps serving the others).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from medsam_peft.data.volumes import image_to_slice, slice_to_image, to_uint8
from medsam_peft.errors import MedsamPeftError
from medsam_peft.models.embedding_cache import ImageEmbeddingCache, content_key
from medsam_peft.transforms.intensity.array import ScaleIntensityByDtype
from medsam_peft.transforms.io.array import ImageReadError, LoadImage2D, LoadVolume, is_volume_path
from medsam_peft.transforms.semantic.array import SemanticFromQueries
from medsam_peft.transforms.spatial.array import ResizeLongestSide, ScaleBox
from medsam_peft.tuners.adapter_io import bundle_adapter_file


class LabelRequestError(MedsamPeftError, ValueError):
    """A request the server cannot answer as sent; ``status`` is the HTTP code to reply with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BundleError(MedsamPeftError, RuntimeError):
    """A bundle folder that cannot serve (missing files, adapter that does not fit its backbone...)."""


@dataclass
class Prompts:
    """Prompts on one 2-D image in SAM's frame: (x, y) pixels of the image as the network sees it."""

    box: list[float] | None
    points: list[list[float]]
    point_labels: list[int]


def _number_list(value: Any, name: str, length: tuple[int, ...]) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) not in length or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value
    ):
        sizes = " or ".join(str(n) for n in length)
        raise LabelRequestError(422, f"{name} must be a list of {sizes} numbers, got {value!r}")
    return [float(v) for v in value]


def _volume_roi(value: Any, shape: tuple[int, ...]) -> list[float]:
    """3D Slicer's ROI ``[i0, i1, j0, j1, k0, k1]`` (its MONAI Label plugin interleaves min/max per axis, and its
    RAS-to-IJK conversion may swap a pair) as ``[i0, j0, i1, j1, k0, k1]`` with each pair ordered."""
    if isinstance(value, (list, tuple)) and len(value) == 4:
        raise LabelRequestError(422, f"roi {list(value)} has 4 numbers but the image is a volume: [i0, j0, i1, j1] and "
                                     "[i0, i1, j0, j1] cannot be told apart; send 3D Slicer's 6-number ROI "
                                     "[i0, i1, j0, j1, k0, k1] (voxel indices)")
    numbers = _number_list(value, "roi", (6,))
    (i0, i1), (j0, j1), (k0, k1) = (sorted(numbers[a:a + 2]) for a in (0, 2, 4))
    if i1 <= i0 or j1 <= j0:
        raise LabelRequestError(422, f"roi {list(value)} read as 3D Slicer's [i0, i1, j0, j1, k0, k1] has no extent "
                                     f"in {'i' if i1 <= i0 else 'j'}; send [i0, i1, j0, j1, k0, k1] with i1 > i0 and "
                                     "j1 > j0")
    if not (0 <= round(k1) and round(k0) < shape[2]):
        raise LabelRequestError(422, f"roi {list(value)}: its k range {k0:g}..{k1:g} misses the volume's 0..{shape[2] - 1}")
    return [i0, j0, i1, j1, max(0.0, float(round(k0))), min(float(shape[2] - 1), float(round(k1)))]


def parse_prompts(params: dict[str, Any], shape: tuple[int, ...],
                  label_names: tuple[str, ...] = ()) -> tuple[list[float] | None, list[tuple], list[int]]:
    """Validate ``roi``/``foreground``/``background`` against an image of array ``shape`` (2-D or 3-D indices).

    2-D images: ``roi`` is ``[x0, y0, x1, y1]``. Volumes: ``roi`` is 3D Slicer's ``[i0, i1, j0, j1, k0, k1]``;
    points are ``[i, j, k]`` (OHIF and Slicer send three indices; a third index 0 is accepted on 2-D images).
    Points may also come under one of the model's ``label_names`` (3D Slicer's DeepEdit-style requests name the
    point list after the label being drawn): they are foreground clicks.
    Returns the box (array indices: 4 numbers, or ``[i0, j0, i1, j1, k0, k1]`` for volumes), the points (tuples of
    2 or 3 indices) and their labels.
    """
    ndim = len(shape)
    known = {"roi", "foreground", "background", *label_names}
    box = None
    if params.get("roi") not in (None, []):
        if ndim == 3:
            box = _volume_roi(params["roi"], shape)
        else:
            box = _number_list(params["roi"], "roi", (4,))
            if box[2] <= box[0] or box[3] <= box[1]:
                raise LabelRequestError(422, f"roi {params['roi']} has zero or negative area; send [x0, y0, x1, y1] with "
                                             "x1 > x0 and y1 > y0")
        lo, hi = box[:2], box[2:4]
        for axis in range(2):
            if hi[axis] <= 0 or lo[axis] >= shape[axis] - 1:
                raise LabelRequestError(422, f"roi {params['roi']} lies outside the image (axis {axis} has "
                                             f"{shape[axis]} pixels, valid indices 0..{shape[axis] - 1})")
            # A box dragged past the border is clipped to it, as a viewer would draw it.
            box[axis], box[axis + 2] = max(lo[axis], 0.0), min(hi[axis], float(shape[axis] - 1))
    points, labels = [], []
    for key, label in (("foreground", 1), *((name, 1) for name in label_names if name != "background"),
                       ("background", 0)):
        value = params.get(key) or []
        if not isinstance(value, (list, tuple)):
            raise LabelRequestError(422, f"{key} must be a list of points [[x, y{', z' if ndim == 3 else ''}], ...]")
        for point in value:
            lengths = (ndim,) if ndim == 3 else (2, 3)
            p = _number_list(point, f"each {key} point", lengths)
            if ndim == 2 and len(p) == 3:
                if p[2] != 0:
                    raise LabelRequestError(422, f"{key} point {point} has slice index {p[2]:g} but the image is 2-D")
                p = p[:2]
            if any(not 0 <= c <= shape[a] - 1 for a, c in enumerate(p)):
                raise LabelRequestError(422, f"{key} point {point} lies outside the image of shape {tuple(shape)}")
            points.append(tuple(p))
            labels.append(label)
    # Label names as point keys (DeepEdit style) are not prompts this model takes: say so instead of ignoring them.
    extra = [k for k, v in params.items() if k not in known and isinstance(v, list) and v
             and all(isinstance(p, list) for p in v)]
    if extra:
        names = "".join(f", {n!r}" for n in label_names if n != "background")
        raise LabelRequestError(422, f"unknown point label(s) {extra}: points go under 'foreground'{names} (label 1) or "
                                     "'background' (label 0)")
    return box, points, labels


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise BundleError(f"{path} is missing: export the bundle with `medsam-peft export-bundle RUN_DIR OUT_DIR`") from err
    except json.JSONDecodeError as err:
        raise BundleError(f"{path} is not valid JSON ({err}); re-export the bundle") from err


class BundlePredictor:
    """A tuned SAM loaded from an exported bundle folder, built on first use (thread-safe).

    ``from_run`` serves a training run's adapter instead (the run's ``run_config.json`` holds the same settings as a
    bundle's ``configs/inference.json``): ``medsam-peft predict`` takes either."""

    def __init__(self, bundle_dir: str | Path, device: str | torch.device = "cpu", threshold: float = 0.5,
                 embedding_cache_size: int = 16) -> None:
        self.bundle_dir = Path(bundle_dir)
        if not self.bundle_dir.is_dir():
            raise BundleError(f"bundle folder {self.bundle_dir} not found")
        self.metadata = _read_json(self.bundle_dir / "configs" / "metadata.json")
        self.config = _read_json(self.bundle_dir / "configs" / "inference.json")
        self._adapter_override: Path | None = None
        if not self.adapter_file.is_file():
            raise BundleError(f"{self.adapter_file} is missing: the bundle has no adapter")
        try:
            channels = self.metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
            int(self.config["image_size"])
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(f"{self.bundle_dir}: metadata.json/inference.json lack {err}; re-export the bundle") from err
        self._configure({name: int(i) for i, name in channels.items() if name != "background"}, device, threshold,
                        embedding_cache_size)

    @classmethod
    def from_run(cls, run_dir: str | Path, adapter_file: str | Path, device: str | torch.device = "cpu",
                 threshold: float = 0.5, embedding_cache_size: int = 16, checkpoint: str | None = None
                 ) -> BundlePredictor:
        """Serve ``adapter_file`` with the preprocessing and base checkpoint recorded in ``run_dir/run_config.json``
        (``checkpoint`` overrides the recorded one, e.g. when the run's base weights lie elsewhere here)."""
        self = cls.__new__(cls)
        self.bundle_dir = Path(run_dir)
        run_config = self.bundle_dir / "run_config.json"
        settings = _read_json(run_config)
        if not isinstance(settings, dict) or "image_size" not in settings:
            raise BundleError(f"{run_config} has no image_size; it is not a medsam_peft training run's file")
        if checkpoint is not None:
            settings = {**settings, "checkpoint": checkpoint}
        self._adapter_override = Path(adapter_file)
        if not self._adapter_override.is_file():
            raise BundleError(f"adapter file {adapter_file} not found")
        from medsam_peft.export import datalist_summary, run_classes
        from medsam_peft.tuners.adapter_io import read_adapter

        # the adapter's decoder decides binary or multi-class (run_config.json of older runs does not say)
        num_classes, names = run_classes(read_adapter(self._adapter_override)["metadata"], datalist_summary(settings)[0])
        labels = {"foreground": 1}
        if num_classes:
            settings = {**settings, "num_classes": num_classes, "class_names": names}
            labels = {name: i for i, name in enumerate(names) if i > 0}
        self.metadata, self.config = {"name": self.bundle_dir.name}, settings
        self._configure(labels, device, threshold, embedding_cache_size)
        return self

    def _configure(self, labels: dict[str, int], device: str | torch.device, threshold: float,
                   embedding_cache_size: int) -> None:
        """The settings read from ``self.config`` (a bundle's inference.json or a run's run_config.json)."""
        self.image_size = int(self.config["image_size"])
        self.labels = labels
        self.squash = bool(self.config.get("squash", False))
        self.prompt = str(self.config.get("prompt", "box"))
        # trained with SAM's multimask output: a lone click (no box, no mask) gets the most confident of 3 masks
        self.multimask = bool(self.config.get("multimask", False))
        # trained with click disks in the fed-back mask prompt (SimulatedAnnotator click_radius): clicks decode so
        self.click_radius = float(self.config.get("click_radius", 0.0) or 0.0)
        self.precision = str(self.config.get("precision", "auto"))
        self.checkpoint = self.config.get("checkpoint")
        self.device = torch.device(device)
        self.threshold = threshold
        self._model = None
        # Image embeddings of the last images served: a second prompt on an image skips the encoder.
        self.embeddings = ImageEmbeddingCache(embedding_cache_size)
        self._error: BundleError | None = None
        self._lock = threading.Lock()
        self._loaded_version: tuple[int, int, int] | None = None
        # The last click rounds per (image, box) of an interactive model: the next request that adds clicks to
        # them decodes only its new clicks (an annotator's session), bounded like the embedding cache.
        self._click_rounds: OrderedDict[tuple, tuple[tuple, tuple, torch.Tensor]] = OrderedDict()
        self._click_rounds_size = max(1, int(embedding_cache_size))

    @property
    def name(self) -> str:
        return self.bundle_dir.name

    @property
    def adapter_file(self) -> Path:
        """Looked up on each use: the train task may turn a bundle's old ``model.pt`` adapter into the safetensors
        pair while it is served."""
        return self._adapter_override or bundle_adapter_file(self.bundle_dir)

    @property
    def error(self) -> BundleError | None:
        """Why the model could not be loaded (None if it loaded or was not tried yet)."""
        return self._error

    @property
    def prompt_free(self) -> bool:
        """Trained without prompts (Conv-LoRA's mode): served as an automatic task."""
        return self.prompt == "none"

    def _adapter_version(self) -> tuple[int, int, int] | None:
        try:
            stat = self.adapter_file.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def model(self):
        """The tuned model; a load failure is remembered and raised as ``BundleError`` on every call.

        A new ``models/model.safetensors`` (MONAI Label's train task replaces it by an atomic rename) is loaded on the next
        call, with the cached image embeddings dropped: a tuned encoder embeds differently."""
        with self._lock:
            version = self._adapter_version()
            if version != self._loaded_version and (self._model is not None or self._error is not None):
                self._model, self._error = None, None
                self.embeddings.clear()
                self._click_rounds.clear()
            if self._error is not None:
                raise self._error
            if self._model is None:
                self._loaded_version = version
                from medsam_peft.tuners import load_tuned_sam

                try:
                    self._model = load_tuned_sam(self.adapter_file, self.checkpoint, device=self.device).eval()
                except Exception as err:  # AdapterLoadError, CheckpointError, download failures...
                    self._error = BundleError(f"model {self.name!r} cannot be loaded from {self.bundle_dir}: {err}")
                    raise self._error from err
            return self._model

    # ---- one 2-D image in the network's orientation --------------------------------------------------------
    def _sam(self):
        model = self.model()
        return getattr(model, "model", model)  # TunedSam wraps the PromptableSam whose encoder/decoder we call

    def predict_image(self, image: np.ndarray, prompts: Prompts, mask_input: torch.Tensor | None = None,
                      counts: dict[str, int] | None = None, probabilities: bool = False
                      ) -> tuple[np.ndarray, torch.Tensor]:
        """``image``: (H, W) or (H, W, 3) float in [0, 1]. Returns the (H, W) uint8 mask (0/1) (with
        ``probabilities``: the float foreground probability instead) and the decoder's low-resolution logits
        (1, 1, S/4, S/4), which a later call on a similar image may take as ``mask_input``.

        The image embedding comes from ``self.embeddings`` when this exact network input was encoded before, so a
        further prompt on the same image runs only the prompt encoder and the mask decoder. ``counts`` (if given)
        gets ``encoder_passes`` and ``decoder_passes`` added.
        """
        sam = self._sam()
        tensor = torch.as_tensor(image, dtype=torch.float32)
        tensor = tensor[None].expand(3, -1, -1) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        height, width = tensor.shape[1:]
        # the training chain's resize-and-pad (recorded on the MetaTensor) and box mapping, inverted below
        resizer = ResizeLongestSide(self.image_size, "bilinear", self.squash)
        boxes = ScaleBox(self.image_size, self.squash)
        net_input = resizer(MetaTensor(tensor))
        model_input = net_input.as_tensor()[None].to(self.device)
        box = points = point_labels = None
        if prompts.box is not None:
            box = boxes(prompts.box, (height, width))[None].to(self.device)
        if prompts.points:
            sx, sy = boxes.scale_factors((height, width))
            points = torch.tensor([[[x * sx, y * sy] for x, y in prompts.points]], device=self.device)
            point_labels = torch.tensor([prompts.point_labels], device=self.device)
        from medsam_peft.engines import AutocastInferer

        dtype = AutocastInferer(self.precision).dtype_for(self.device)
        encoded = []

        def encode(batch: torch.Tensor) -> torch.Tensor:
            encoded.append(1)
            return sam.encode_image(batch)

        if box is None and points is None and mask_input is None and not self.prompt_free:
            raise LabelRequestError(422, f"model {self.name!r} needs a prompt on this image")
        if sam.num_classes is not None:  # the multi-class decoder: a class-id map, no prompts
            with torch.no_grad(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32):
                low_res, classes = sam.decode_queries(self.embeddings.get_or_compute(model_input, encode))
                masks = sam.upscale(low_res, model_input.shape[-2:])
            if counts is not None:
                counts["encoder_passes"] = counts.get("encoder_passes", 0) + len(encoded)
                counts["decoder_passes"] = counts.get("decoder_passes", 0) + 1
            semantic = SemanticFromQueries()({"masks": masks[0].float().cpu(), "classes": classes[0].float().cpu()})
            # per-class probabilities back to the image's size, then the argmax (as configs/evaluate.json)
            restored = resizer.inverse(MetaTensor(semantic, applied_operations=list(net_input.applied_operations)))
            return restored.as_tensor().argmax(0).numpy().astype(np.uint8), low_res.float()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32):
            embedding = self.embeddings.get_or_compute(model_input, encode)
            if self.prompt == "interactive" and mask_input is None:  # a box, clicks or both
                low_res, passes = self._decode_click_rounds(sam, embedding, model_input, box, points, point_labels)
            else:  # a box-trained or prompt-free model, or a propagated mask prompt: one pass (multimask is only
                # ever set for interactive models, whose lone clicks _decode_click_rounds answers)
                low_res, passes = sam.decode(embedding, box, points, point_labels, mask_input), 1
            logits = sam.upscale(low_res, model_input.shape[-2:]).float()
        if counts is not None:
            counts["encoder_passes"] = counts.get("encoder_passes", 0) + len(encoded)
            counts["decoder_passes"] = counts.get("decoder_passes", 0) + passes
        prob = MetaTensor(torch.sigmoid(logits[0, :1].cpu()), applied_operations=list(net_input.applied_operations))
        restored = resizer.inverse(prob).as_tensor()[0].numpy()
        if probabilities:
            return restored, low_res.float()
        return (restored > self.threshold).astype(np.uint8), low_res.float()

    def _decode_click_rounds(self, sam, embedding: torch.Tensor, model_input: torch.Tensor, box: torch.Tensor | None,
                             points: torch.Tensor | None, point_labels: torch.Tensor | None
                             ) -> tuple[torch.Tensor, int]:
        """Clicks on a click-trained model, decoded as its training and the click protocol decode them: one round per
        click in the order sent (3D Slicer sends its foreground points, then its background ones), each fed the
        previous round's low-resolution logits as the mask prompt with the clicks written in (``click_radius``),
        after a round of the box alone where one is given; a first click alone gets SAM's most confident of three
        masks (``multimask``). A negative click on what the previous round already calls background is its disk alone
        (``settled_negative``). The rounds of the last request on this image and box are kept, so that a request
        adding clicks to them (an annotator clicking on, or clicking into a box's mask) decodes only its new clicks.
        Returns the last round's logits and the decoder passes run."""
        from medsam_peft.engines.interactive import decode_clicks, settled_negative  # MONAI's engines: lazily

        clicks = () if points is None else tuple(
            (float(x), float(y), int(label)) for (x, y), label in zip(points[0].tolist(), point_labels[0].tolist()))
        key = (content_key(model_input), None if box is None else tuple(box.flatten().tolist()))
        with self._lock:
            known = self._click_rounds.get(key)
        if known is not None and clicks[: len(known[0])] == known[0]:  # the same box, clicks added (or none)
            start, tokens, previous, passes = len(known[0]), list(known[1]), known[2], 0
        else:
            start, tokens, previous, passes = 0, [], None, 0
            if box is not None:  # the box round
                previous, passes = sam.decode(embedding, box), 1
        image_size = int(sam.image_size)
        for k in range(start + 1, len(clicks) + 1):
            click = clicks[k - 1]
            if not settled_negative(click, previous, image_size, self.click_radius):
                tokens.append(click)
            lone = self.multimask and previous is None and box is None  # decode_clicks' multimask round: 2 passes
            previous = decode_clicks(sam, embedding, box, [list(clicks[:k])], previous, multimask=self.multimask,
                                     click_radius=self.click_radius, tokens=[tokens])
            passes += 2 if lone else 1
        with self._lock:
            self._click_rounds[key] = (clicks, tuple(tokens), previous)
            self._click_rounds.move_to_end(key)
            while len(self._click_rounds) > self._click_rounds_size:
                self._click_rounds.popitem(last=False)
        return previous, passes

    # ---- a request ----------------------------------------------------------------------------------------------
    def segment_file(self, path: str | Path, params: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any], Any]:
        """Segment ``path`` with the prompts in ``params``.

        Returns (mask on the input's array grid: (W, H) for 2-D as MONAI loads PNGs, (X, Y, Z) for volumes,
        result details, the volume affine or None).
        """
        path = Path(path)
        if not path.exists():
            raise LabelRequestError(404, f"image {path.name!r} not found in the datastore; upload it or check its id")
        is_volume = is_volume_path(path)
        try:
            loaded = LoadVolume()(path) if is_volume else LoadImage2D()(path)
        except ImageReadError as err:
            raise LabelRequestError(415, f"cannot read the image: {err}") from err
        if is_volume:
            return self._segment_volume(np.asarray(loaded[0]), params, loaded.affine)
        rgb = np.asarray(ScaleIntensityByDtype()(loaded)).transpose(1, 2, 0)  # (H, W, 3) in [0, 1]
        box, points, labels = parse_prompts(params, (rgb.shape[1], rgb.shape[0]), tuple(self.labels))
        self._require_prompt(box, points)
        counts: dict[str, int] = {}
        mask, _ = self.predict_image(rgb, Prompts(box, [list(p) for p in points], labels), counts=counts)
        return mask.T, {"pixels": int((mask > 0).sum()), "shape": list(mask.T.shape), **counts}, None

    @property
    def semantic(self) -> bool:
        """A multi-class model (its bundle records ``num_classes``): automatic, answering with a class-id map."""
        return bool(self.config.get("num_classes"))

    def _require_prompt(self, box, points) -> None:
        if self.semantic and (box is not None or points):
            raise LabelRequestError(422, f"model {self.name!r} is a multi-class automatic model and takes no prompt; "
                                         "send the image alone (for a volume, optionally 'slice')")
        if not self.prompt_free and box is None and not points:
            raise LabelRequestError(422, f"model {self.name!r} needs a prompt: send 'roi' [x0, y0, x1, y1] and/or "
                                         "'foreground'/'background' points")

    def _segment_volume(self, volume: np.ndarray, params: dict[str, Any], affine) -> tuple[np.ndarray, dict, Any]:
        box, points, labels = parse_prompts(params, volume.shape, tuple(self.labels))
        index = params.get("slice")
        if index is not None and index != -1 and (
                not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < volume.shape[2]):
            raise LabelRequestError(422, f"slice must be an integer in 0..{volume.shape[2] - 1}, got {index!r}")
        propagate = params.get("propagate")
        if propagate is not None and not isinstance(propagate, bool):
            raise LabelRequestError(422, f"propagate must be true or false, got {propagate!r}")
        mode = params.get("propagation_prompt", "box")
        if mode not in PROPAGATION_PROMPTS:
            raise LabelRequestError(422, f"propagation_prompt must be one of {list(PROPAGATION_PROMPTS)}, got "
                                         f"{str(mode)[:40]!r}")
        self._require_prompt(box, points)
        window = params.get("window")
        window = None if window is None else tuple(_number_list(window, "window", (2,)))
        try:
            scaled = to_uint8(volume, window).astype(np.float32) / 255.0
        except ValueError as err:
            raise LabelRequestError(422, f"window: {err}") from err
        depth, columns = volume.shape[2], volume.shape[1]
        viewed = index is not None and index != -1
        bounds = (0, depth - 1)
        if viewed:  # Slicer and OHIF send the viewed slice of a 2-D model, -1 for none
            if box is not None and not box[4] <= index <= box[5]:
                raise LabelRequestError(422, f"slice {index} lies outside the roi's k range {box[4]:g}..{box[5]:g}")
            slices = [index]
        elif box is not None:
            slices = list(range(int(box[4]), int(box[5]) + 1))
        elif points:
            slices = sorted({int(round(p[2])) for p in points})
        elif self.prompt_free:
            slices = list(range(depth))
        else:
            raise LabelRequestError(422, "a volume needs a prompt: a 6-number roi [i0, i1, j0, j1, k0, k1], "
                                         "[i, j, k] points, or 'slice' for a prompt-free model")
        # Propagation: by default when the prompt lies on one slice (a flat roi, clicks on one slice); asked for
        # with a roi over several slices, the roi's box prompts one slice ('slice', else the middle one) and the
        # others are prompted from their neighbour's mask, within the roi's k range. Never for a prompt-free model.
        single_plane = (box is None or box[4] == box[5]) and not viewed
        propagate = (single_plane if propagate is None else propagate) and not self.prompt_free
        if propagate and box is not None and box[4] != box[5]:
            bounds = (int(box[4]), int(box[5]))
            slices = [index if viewed else (bounds[0] + bounds[1]) // 2]

        def to_image_xy(i: float, j: float) -> tuple[float, float]:
            # slice_to_image: image column = i, image row = (J - 1) - j
            return i, (columns - 1) - j

        counts: dict[str, int] = {}
        out = np.zeros(volume.shape, dtype=np.uint8)
        low_res: dict[int, torch.Tensor] = {}
        for k in slices:
            image_box = None
            if box is not None:
                (x0, y1), (x1, y0) = to_image_xy(box[0], box[1]), to_image_xy(box[2], box[3])
                image_box = [x0, y0, x1, y1]
            plane_points = [(p, lab) for p, lab in zip(points, labels) if int(round(p[2])) == k]
            prompts = Prompts(image_box, [list(to_image_xy(p[0], p[1])) for p, _ in plane_points],
                              [lab for _, lab in plane_points])
            if prompts.box is None and not prompts.points and not self.prompt_free:
                continue  # points on other slices only
            mask, low_res[k] = self.predict_image(slice_to_image(scaled[:, :, k]), prompts, counts=counts)
            out[:, :, k] = image_to_slice(mask)
        propagated: list[int] = []
        if propagate:
            seeds = sorted(k for k in low_res if out[:, :, k].any())
            for seed in seeds:
                for step in (-1, 1):
                    propagated += self._propagate(scaled, out, low_res, seed, step, set(seeds), mode, counts, bounds)
        segmented = sorted(set(slices) | set(propagated))
        return out, {"voxels": int((out > 0).sum()), "slices": segmented, "propagated": sorted(propagated),
                     "shape": list(out.shape), **counts}, affine

    def _propagate(self, scaled: np.ndarray, out: np.ndarray, low_res: dict[int, torch.Tensor], seed: int, step: int,
                   seeds: set[int], mode: str, counts: dict[str, int], bounds: tuple[int, int]) -> list[int]:
        """Segment slices ``seed + step``, ``seed + 2 step``... each prompted with the box around the previous
        slice's mask (widened by ``PROPAGATION_MARGIN`` pixels) and, for ``mode`` "box+mask", its low-resolution
        logits. A box prompt always gives some mask, so the object is taken to end where the new mask stops looking
        like a continuation of the previous one: fewer than ``PROPAGATION_MIN_PIXELS`` pixels, more than
        ``PROPAGATION_MAX_GROWTH`` times its area (the mask filling a box that would then widen slice after slice),
        or less than ``PROPAGATION_MIN_OVERLAP`` of the smaller mask shared with it. Also stops outside ``bounds``
        (the roi's k range, else the volume) and at another prompted slice."""
        done = []
        k, previous = seed + step, slice_to_image(out[:, :, seed])  # back to the image's (rows, columns)
        while bounds[0] <= k <= bounds[1] and k not in seeds:
            rows, cols = np.nonzero(previous)
            height, width = previous.shape
            margin = PROPAGATION_MARGIN
            box = [max(0.0, cols.min() - margin), max(0.0, rows.min() - margin),
                   min(width - 1.0, cols.max() + margin), min(height - 1.0, rows.max() + margin)]
            mask_input = low_res[k - step] if mode == "box+mask" else None
            mask, low_res[k] = self.predict_image(slice_to_image(scaled[:, :, k]), Prompts(box, [], []), mask_input,
                                                  counts)
            if not continues_object(mask.astype(bool), previous.astype(bool)):
                break
            out[:, :, k] = image_to_slice(mask)
            done.append(k)
            previous, k = mask, k + step
        return done


def continues_object(mask: np.ndarray, previous: np.ndarray) -> bool:
    """Whether ``mask`` on a slice reads as the object of ``previous`` on the slice before (see ``_propagate``)."""
    area, before = int(mask.sum()), int(previous.sum())
    if area < PROPAGATION_MIN_PIXELS or area > PROPAGATION_MAX_GROWTH * before:
        return False
    return int((mask & previous).sum()) >= PROPAGATION_MIN_OVERLAP * min(area, before)


# Propagation through a volume: the box around the previous slice's mask is widened by this many pixels (the demo
# trains with boxes jittered by 0-10 px); the object ends where a slice's mask has fewer pixels, grows by more than
# the growth factor or shares less than the overlap fraction of the smaller mask with the previous slice's.
PROPAGATION_MARGIN = 3
PROPAGATION_MIN_PIXELS = 4
PROPAGATION_MAX_GROWTH = 1.5
PROPAGATION_MIN_OVERLAP = 0.5
PROPAGATION_PROMPTS = ("box", "box+mask")


__all__ = ["BundleError", "BundlePredictor", "LabelRequestError", "Prompts", "parse_prompts"]

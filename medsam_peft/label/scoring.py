"""MONAI Label scoring methods and active-learning strategies for a served bundle.

- ``dice`` (``SamDiceScoring``): the served model's Dice on each image that has a ``final`` label, prompted as it was
  trained (the box of each labelled object, or nothing for prompt-free models). Written to the image's info as
  ``dice`` (mean over its objects) and ``dice_model``: which annotated images the current adapter still gets wrong,
  before and after a ``train`` run.
- ``epistemic`` (``SamEpistemicScoring``, prompt-free models only: an unlabelled image has no prompt to give a
  prompted model): test-time-augmentation uncertainty, the mean binary entropy of the foreground probability
  averaged over the four flips of each image (volumes: ``max_planes`` evenly spaced slices, a request may set it). Written as
  ``epistemic_entropy``, which MONAI Label's ``Epistemic`` strategy ranks unlabelled images by.
- Strategies: MONAI Label's own ``random`` and ``first``, and ``epistemic`` where the model is prompt-free.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.scoring import ScoringMethod

from medsam_peft.label.predictor import BundlePredictor, LabelRequestError, Prompts
from medsam_peft.label.train import read_label_png
from medsam_peft.transforms.io.array import ImageReadError

logger = logging.getLogger(__name__)

BOX_MARGIN = 3  # pixels around a labelled object's bounding box, as the tests' and Slicer users' boxes have
FLIPS = ((), (0,), (1,), (0, 1))  # the four flips of the test-time augmentation (axes of the (H, W) image)


def image_planes(image: str | Path, label: str | Path | None = None,
                 max_planes: int = 8) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(H, W, 3) float planes in [0, 1] as the predictor reads ``image`` (a 2-D image, or up to ``max_planes``
    slices of a volume: evenly spaced over the labelled slices when ``label`` is given), each with its label plane."""
    from medsam_peft.data.volumes import slice_to_image, to_uint8
    from medsam_peft.transforms.intensity.array import ScaleIntensityByDtype
    from medsam_peft.transforms.io.array import LoadImage2D, LoadVolume, is_volume_path

    if is_volume_path(Path(image)):
        volume = np.asarray(LoadVolume()(image)[0])
        labels = None if label is None else np.rint(np.asarray(LoadVolume()(label)[0])).astype(np.int32)
        if labels is not None and labels.shape != volume.shape:
            raise LabelRequestError(409, f"label of {Path(image).name} is {labels.shape}, the image {volume.shape}")
        scaled = to_uint8(volume).astype(np.float32) / 255.0
        candidates = (np.flatnonzero(labels.reshape(-1, labels.shape[2]).any(0)) if labels is not None
                      else np.arange(volume.shape[2]))
        chosen = candidates[np.linspace(0, len(candidates) - 1, min(max_planes, len(candidates))).round().astype(int)] \
            if len(candidates) else []
        for k in sorted(set(int(k) for k in chosen)):
            plane = np.repeat(slice_to_image(scaled[:, :, k])[..., None], 3, axis=2)
            yield plane, None if labels is None else slice_to_image(labels[:, :, k])
        return
    rgb = np.asarray(ScaleIntensityByDtype()(LoadImage2D()(image))).transpose(1, 2, 0)
    if label is None:
        yield rgb, None
        return
    values = read_label_png(label)
    if values.shape != rgb.shape[:2]:
        raise LabelRequestError(409, f"label of {Path(image).name} is {values.shape}, the image {rgb.shape[:2]}")
    yield rgb, values


def _max_planes(request: dict[str, Any], default: int) -> int:
    value = request.get("max_planes", default)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
        raise LabelRequestError(422, f"max_planes must be an integer in 1..1000, got {value!r}")
    return value


def box_of(mask: np.ndarray, margin: int = BOX_MARGIN) -> list[float]:
    rows, cols = np.nonzero(mask)
    return [float(cols.min() - margin), float(rows.min() - margin), float(cols.max() + margin),
            float(rows.max() + margin)]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def binary_entropy(probability: np.ndarray) -> np.ndarray:
    p = np.clip(probability, 1e-6, 1 - 1e-6)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


class SamDiceScoring(ScoringMethod):
    """The served model's Dice against each image's ``final`` label (see the module docstring)."""

    def __init__(self, predictor: BundlePredictor, min_pixels: int = 20, max_planes: int = 8) -> None:
        super().__init__(f"Dice of {predictor.name} against the final labels, prompted with each object's box")
        self.predictor = predictor
        self.min_pixels = min_pixels
        self.max_planes = max_planes

    def score_image(self, image: str, label: str, max_planes: int | None = None) -> float | None:
        scores = []
        for plane, labels in image_planes(image, label, max_planes or self.max_planes):
            for value in (int(v) for v in np.unique(labels) if v > 0):
                target = labels == value
                if target.sum() < self.min_pixels:
                    continue
                prompts = Prompts(None if self.predictor.prompt_free else box_of(target), [], [])
                mask, _ = self.predictor.predict_image(plane, prompts)
                scores.append(dice(mask, target))
        return float(np.mean(scores)) if scores else None

    def __call__(self, request: dict[str, Any], datastore) -> dict[str, float]:
        from monailabel.interfaces.datastore import DefaultLabelTag

        planes = _max_planes(request, self.max_planes)
        result = {}
        for image_id in datastore.list_images():
            label_id = datastore.get_label_by_image_id(image_id, DefaultLabelTag.FINAL)
            if not label_id:
                continue
            try:
                score = self.score_image(datastore.get_image_uri(image_id),
                                         datastore.get_label_uri(label_id, DefaultLabelTag.FINAL), planes)
            except (ImageReadError, ValueError, OSError) as err:
                logger.warning("dice: %s skipped: %s", image_id, err)
                continue
            if score is None:
                continue
            datastore.update_image_info(image_id, {"dice": score, "dice_model": self.predictor.name})
            result[image_id] = score
            logger.info("dice of %s on %s: %.4f", self.predictor.name, image_id, score)
        return result


class SamEpistemicScoring(ScoringMethod):
    """Test-time-augmentation entropy of a prompt-free model on each unlabelled image (see the module docstring)."""

    def __init__(self, predictor: BundlePredictor, max_planes: int = 8) -> None:
        super().__init__(f"flip-TTA entropy of {predictor.name} on unlabelled images (prompt-free models)")
        self.predictor = predictor
        self.max_planes = max_planes

    def score_image(self, image: str, max_planes: int | None = None) -> float:
        entropies = []
        for plane, _ in image_planes(image, None, max_planes or self.max_planes):
            mean = np.zeros(plane.shape[:2], dtype=np.float64)
            for axes in FLIPS:
                flipped = np.ascontiguousarray(np.flip(plane, axes) if axes else plane)
                probability, _ = self.predictor.predict_image(flipped, Prompts(None, [], []), probabilities=True)
                mean += np.flip(probability, axes) if axes else probability
            entropies.append(float(binary_entropy(mean / len(FLIPS)).mean()))
        return float(np.mean(entropies))

    def __call__(self, request: dict[str, Any], datastore) -> dict[str, float]:
        planes = _max_planes(request, self.max_planes)
        result = {}
        for image_id in datastore.get_unlabeled_images():
            try:
                score = self.score_image(datastore.get_image_uri(image_id), planes)
            except (ImageReadError, ValueError) as err:  # one unreadable image does not stop the others
                logger.warning("epistemic: %s skipped: %s", image_id, err)
                continue
            datastore.update_image_info(image_id, {"epistemic_entropy": score, "epistemic_model": self.predictor.name})
            result[image_id] = score
        return result


def scoring_methods(predictors: dict[str, BundlePredictor]) -> dict[str, ScoringMethod]:
    """``dice`` (and ``epistemic`` for prompt-free models) of the first served model, plus ``<kind>_<model>`` for
    every served model. Both score binary masks: multi-class models are not scorers (yet)."""
    predictors = {name: p for name, p in predictors.items() if not p.semantic}
    methods: dict[str, ScoringMethod] = {}
    for name, predictor in predictors.items():
        methods[f"dice_{name}"] = SamDiceScoring(predictor)
        if predictor.prompt_free:
            methods[f"epistemic_{name}"] = SamEpistemicScoring(predictor)
    first = next(iter(predictors.values()), None)
    if first is not None:
        methods["dice"] = methods[f"dice_{first.name}"]
        prompt_free = next((p for p in predictors.values() if p.prompt_free), None)
        if prompt_free is not None:
            methods["epistemic"] = methods[f"epistemic_{prompt_free.name}"]
    return methods


def strategies(predictors: dict[str, BundlePredictor]) -> dict[str, Any]:
    """MONAI Label's ``random`` and ``first``; ``epistemic`` where a prompt-free model can score unlabelled images."""
    from monailabel.tasks.activelearning.epistemic import Epistemic
    from monailabel.tasks.activelearning.first import First
    from monailabel.tasks.activelearning.random import Random

    found: dict[str, Any] = {"random": Random(), "first": First()}
    if any(p.prompt_free and not p.semantic for p in predictors.values()):
        found["epistemic"] = Epistemic()
    return found


__all__ = ["SamDiceScoring", "SamEpistemicScoring", "binary_entropy", "box_of", "dice", "image_planes",
           "scoring_methods", "strategies"]

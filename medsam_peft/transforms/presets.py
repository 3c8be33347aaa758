"""The one preprocessing definition of 2-D inputs, shared by training, evaluation, inference, exported bundles and the
MONAI Label predictor: read image (and mask), scale intensities by the file's pixel type, resize-and-pad to the
model's size (recorded for ``Invertd``)."""

from __future__ import annotations

from monai.transforms import MapTransform

from medsam_peft.transforms.intensity.dictionary import ScaleIntensityByDtyped
from medsam_peft.transforms.io.dictionary import LoadImageMaskd
from medsam_peft.transforms.spatial.dictionary import ResizeLongestSided


def sam_preprocessing(image_size: int, squash: bool = False, label_mode: str | None = "binary",
                      mask_threshold: float | None = None) -> list[MapTransform]:
    """``[LoadImageMaskd, ScaleIntensityByDtyped, ResizeLongestSided]`` for ``{"image"[, "label"]}`` samples.

    Args:
        image_size: the model's input size.
        squash: resize both sides to ``image_size`` (the Conv-LoRA reference) instead of keeping the aspect ratio.
        label_mode: ``"binary"`` / ``"multiclass"`` masks under ``"label"`` (resized with ``nearest-exact``), or
            ``None`` for images only (inference; a ``label`` present is still read and left at its size).
        mask_threshold: binarise masks at this value (JPEG masks: 127); ``None`` takes {0, 1} / {0, 255} masks.
    """
    with_label = label_mode is not None
    return [
        LoadImageMaskd("image", "label", mode=label_mode or "binary", threshold=mask_threshold,
                       allow_missing_label=not with_label),
        ScaleIntensityByDtyped("image"),
        ResizeLongestSided(["image", "label"] if with_label else ["image"], image_size,
                           mode=["bilinear", "nearest-exact"] if with_label else "bilinear", squash=squash),
    ]


__all__ = ["sam_preprocessing"]

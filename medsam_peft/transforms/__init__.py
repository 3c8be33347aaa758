"""MONAI-style transforms for SAM inputs: readers, resize/pad with exact inverse, box and point prompts from masks,
3-D volumes to 2-D slices and back. 2-D files are scaled to [0, 1] by their pixel type's range (``ScaleIntensityByDtyped``); volumes use MONAI's own
transforms (see README: CT windowing is
``ScaleIntensityRanged(a_min=-500, a_max=1000, b_min=0, b_max=1, clip=True)``, MR percentile scaling is
``ScaleIntensityRangePercentilesd(lower=0.5, upper=99.5, b_min=0, b_max=1, clip=True)``)."""

from medsam_peft.transforms.array import (
    BoxFromMask,
    PointsFromMask,
    ResizeLongestSide,
    RestoreOriginalSize,
    ScaleIntensityByDtype,
    SemanticFromQueries,
)
from medsam_peft.transforms.dictionary import (
    SemanticFromQueriesd,
    RandBoxFromMaskd,
    RandBoxFromMaskD,
    RandBoxFromMaskDict,
    RandPointsFromMaskd,
    RandPointsFromMaskD,
    RandPointsFromMaskDict,
    ResizeLongestSided,
    ResizeLongestSideD,
    ResizeLongestSideDict,
    RestoreOriginalSized,
    RestoreOriginalSizeD,
    RestoreOriginalSizeDict,
    SaveMaskd,
    SaveMaskD,
    ScaleIntensityByDtyped,
    ScaleIntensityByDtypeD,
    ScaleIntensityByDtypeDict,
    SaveMaskDict,
    ScaleBoxd,
    ScaleBoxD,
    ScaleBoxDict,
)
from medsam_peft.transforms.io import (
    ImageReadError,
    LoadImage2D,
    LoadImageMaskd,
    LoadImageMaskD,
    LoadImageMaskDict,
    LoadMask2D,
    LoadVolume,
    LoadVolumed,
    LoadVolumeD,
    LoadVolumeDict,
    mask_from_array,
)
from medsam_peft.transforms.volume import (
    AssembleVolume,
    SliceVolumed,
    SliceVolumeD,
    SliceVolumeDict,
    foreground_slices,
    write_nifti,
    write_volume,
)

__all__ = [
    "SemanticFromQueries",
    "SemanticFromQueriesd",
    "AssembleVolume", "BoxFromMask", "ImageReadError", "LoadImage2D", "LoadImageMaskD", "LoadImageMaskDict",
    "LoadImageMaskd", "LoadMask2D", "LoadVolume", "LoadVolumeD", "LoadVolumeDict", "LoadVolumed", "PointsFromMask",
    "RandBoxFromMaskD", "RandBoxFromMaskDict", "RandBoxFromMaskd", "RandPointsFromMaskD", "RandPointsFromMaskDict",
    "RandPointsFromMaskd", "ResizeLongestSide", "ResizeLongestSideD", "ResizeLongestSideDict", "ResizeLongestSided",
    "RestoreOriginalSize", "RestoreOriginalSizeD", "RestoreOriginalSizeDict", "RestoreOriginalSized",
    "SaveMaskD", "SaveMaskDict", "SaveMaskd", "ScaleIntensityByDtype", "ScaleIntensityByDtypeD",
    "ScaleIntensityByDtypeDict", "ScaleIntensityByDtyped", "ScaleBoxD", "ScaleBoxDict", "ScaleBoxd",
    "SliceVolumeD", "SliceVolumeDict", "SliceVolumed", "foreground_slices", "mask_from_array", "write_nifti", "write_volume",
]

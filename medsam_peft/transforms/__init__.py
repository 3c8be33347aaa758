"""MONAI-style transforms for SAM inputs, one area per folder with ``array.py`` (tensor in, tensor out) and
``dictionary.py`` (the ``...d`` classes usable from bundle JSON), as ``monai.transforms``:

- ``io``: readers with errors naming the file (``LoadImage2D``, ``LoadMask2D``, ``LoadVolume`` / ``LoadImageMaskd``,
  ``LoadVolumed``), writers (``SaveMask`` / ``SaveMaskd``, ``write_nifti``, ``write_volume``);
- ``intensity``: ``ScaleIntensityByDtype[d]`` (2-D files by their pixel type's range; volumes use MONAI's own
  ``ScaleIntensityRanged`` CT window or ``ScaleIntensityRangePercentilesd``, see the README);
- ``spatial``: ``ResizeLongestSide[d]`` (invertible: ``Invertd`` restores predictions), ``RestoreOriginalSize[d]``,
  ``ScaleBox[d]``;
- ``prompts``: ``RandBoxFromMask[d]``, ``RandPointsFromMask[d]``;
- ``volume``: ``SliceVolume[d]``, ``AssembleVolume``, ``foreground_slices``;
- ``semantic``: ``SemanticFromQueries[d]``;
- ``presets.sam_preprocessing``: the one 2-D preprocessing chain of training, evaluation, inference and serving.
"""

from medsam_peft.transforms.intensity.array import ScaleIntensityByDtype
from medsam_peft.transforms.intensity.dictionary import (
    ScaleIntensityByDtypeD,
    ScaleIntensityByDtyped,
    ScaleIntensityByDtypeDict,
)
from medsam_peft.transforms.io.array import (
    IGNORE_LABEL,
    INTENSITY_MAX_KEY,
    MASK_MODES,
    VOLUME_SUFFIXES,
    ImageReadError,
    LoadImage2D,
    LoadMask2D,
    LoadVolume,
    MissingKeyError,
    SaveMask,
    is_volume_path,
    mask_from_array,
    write_nifti,
    write_volume,
)
from medsam_peft.transforms.io.dictionary import (
    LoadImageMaskD,
    LoadImageMaskd,
    LoadImageMaskDict,
    LoadVolumeD,
    LoadVolumed,
    LoadVolumeDict,
    SaveMaskD,
    SaveMaskd,
    SaveMaskDict,
)
from medsam_peft.transforms.presets import sam_preprocessing
from medsam_peft.transforms.prompts.array import BoxFromMask, PointsFromMask, RandBoxFromMask, RandPointsFromMask
from medsam_peft.transforms.prompts.dictionary import (
    RandBoxFromMaskD,
    RandBoxFromMaskd,
    RandBoxFromMaskDict,
    RandPointsFromMaskD,
    RandPointsFromMaskd,
    RandPointsFromMaskDict,
)
from medsam_peft.transforms.semantic.array import SemanticFromQueries
from medsam_peft.transforms.semantic.dictionary import SemanticFromQueriesd
from medsam_peft.transforms.spatial.array import ResizeLongestSide, RestoreOriginalSize, ScaleBox
from medsam_peft.transforms.spatial.dictionary import (
    ORIGINAL_SIZE_SUFFIX,
    CropToShaped,
    ResizeLongestSideD,
    ResizeLongestSided,
    ResizeLongestSideDict,
    RestoreOriginalSizeD,
    RestoreOriginalSized,
    RestoreOriginalSizeDict,
    ScaleBoxD,
    ScaleBoxd,
    ScaleBoxDict,
)
from medsam_peft.transforms.volume.array import AXES, AssembleVolume, SliceVolume, foreground_slices
from medsam_peft.transforms.volume.dictionary import SliceVolumeD, SliceVolumed, SliceVolumeDict

__all__ = [
    "AXES", "IGNORE_LABEL", "INTENSITY_MAX_KEY", "MASK_MODES", "ORIGINAL_SIZE_SUFFIX", "VOLUME_SUFFIXES",
    "AssembleVolume", "BoxFromMask", "CropToShaped", "ImageReadError", "LoadImage2D", "LoadImageMaskD", "LoadImageMaskDict",
    "LoadImageMaskd", "LoadMask2D", "LoadVolume", "LoadVolumeD", "LoadVolumeDict", "LoadVolumed", "MissingKeyError",
    "PointsFromMask", "RandBoxFromMask", "RandBoxFromMaskD", "RandBoxFromMaskDict", "RandBoxFromMaskd",
    "RandPointsFromMask", "RandPointsFromMaskD", "RandPointsFromMaskDict", "RandPointsFromMaskd",
    "ResizeLongestSide", "ResizeLongestSideD", "ResizeLongestSideDict", "ResizeLongestSided", "RestoreOriginalSize",
    "RestoreOriginalSizeD", "RestoreOriginalSizeDict", "RestoreOriginalSized", "SaveMask", "SaveMaskD",
    "SaveMaskDict", "SaveMaskd", "ScaleBox", "ScaleBoxD", "ScaleBoxDict", "ScaleBoxd", "ScaleIntensityByDtype",
    "ScaleIntensityByDtypeD", "ScaleIntensityByDtypeDict", "ScaleIntensityByDtyped", "SemanticFromQueries",
    "SemanticFromQueriesd", "SliceVolume", "SliceVolumeD", "SliceVolumeDict", "SliceVolumed", "foreground_slices",
    "is_volume_path", "mask_from_array", "sam_preprocessing", "write_nifti", "write_volume",
]

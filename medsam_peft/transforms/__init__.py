"""MONAI-style transforms for SAM inputs: resize/pad with exact inverse, box prompts from masks."""

from medsam_peft.transforms.array import BoxFromMask, ResizeLongestSide, RestoreOriginalSize
from medsam_peft.transforms.dictionary import (
    RandBoxFromMaskd,
    RandBoxFromMaskD,
    RandBoxFromMaskDict,
    ResizeLongestSided,
    ResizeLongestSideD,
    ResizeLongestSideDict,
    RestoreOriginalSized,
    RestoreOriginalSizeD,
    RestoreOriginalSizeDict,
)

__all__ = [
    "BoxFromMask",
    "RandBoxFromMaskD",
    "RandBoxFromMaskDict",
    "RandBoxFromMaskd",
    "ResizeLongestSide",
    "ResizeLongestSideD",
    "ResizeLongestSideDict",
    "ResizeLongestSided",
    "RestoreOriginalSize",
    "RestoreOriginalSizeD",
    "RestoreOriginalSizeDict",
    "RestoreOriginalSized",
]

"""Datasets turned into MONAI datalists (training / validation lists of {image, label})."""

from medsam_peft.data.colin27 import SUBCORTICAL, colin27_pairs, prepare_colin27_aal

__all__ = ["SUBCORTICAL", "colin27_pairs", "prepare_colin27_aal"]

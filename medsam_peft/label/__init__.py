"""Serving tuned models to annotators through MONAI Label (``apps/medsam_label``).

``medsam_peft.label.predictor`` works without MONAI Label; ``medsam_peft.label.app`` needs the ``label`` extra.
"""

from medsam_peft.label.predictor import BundleError, BundlePredictor, LabelRequestError, Prompts, parse_prompts

__all__ = ["BundleError", "BundlePredictor", "LabelRequestError", "Prompts", "parse_prompts"]

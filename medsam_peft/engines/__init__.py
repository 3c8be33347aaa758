"""Pieces that plug tuned SAM models into MONAI's SupervisedTrainer / SupervisedEvaluator."""

from medsam_peft.engines.handlers import (
    AdapterState,
    AuxLossHandler,
    GradientClipHandler,
    MetricProgressReport,
    OverlayWriter,
)
from medsam_peft.engines.inferer import AutocastInferer
from medsam_peft.engines.tracking import SafeMLFlowHandler

__all__ = [
    "AdapterState",
    "AutocastInferer",
    "AuxLossHandler",
    "GradientClipHandler",
    "MetricProgressReport",
    "OverlayWriter",
    "SafeMLFlowHandler",
]

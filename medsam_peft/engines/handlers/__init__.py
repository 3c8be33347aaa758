"""Ignite handlers for tuned SAM training, one per module as in ``monai.handlers``."""

from medsam_peft.engines.handlers.adapter_state import AdapterState
from medsam_peft.engines.handlers.aux_loss import AuxLossHandler
from medsam_peft.engines.handlers.best_adapter import BestAdapterCheckpoint
from medsam_peft.engines.handlers.epoch_summary import EpochSummary
from medsam_peft.engines.handlers.gradient_clip import GradientClipHandler
from medsam_peft.engines.handlers.metric_report import MetricProgressReport
from medsam_peft.engines.handlers.mlflow_handler import SafeMLFlowHandler
from medsam_peft.engines.handlers.overlay_writer import OverlayWriter
from medsam_peft.engines.handlers.progress_bar import ProgressBar
from medsam_peft.engines.handlers.resume_checkpoint import ResumeCheckpoint
from medsam_peft.engines.handlers.rng_state import RngState
from medsam_peft.engines.handlers.run_settings import RunSettings

__all__ = [
    "AdapterState", "AuxLossHandler", "BestAdapterCheckpoint", "EpochSummary", "GradientClipHandler", "MetricProgressReport", "OverlayWriter",
    "ProgressBar", "ResumeCheckpoint", "RngState", "RunSettings", "SafeMLFlowHandler",
]

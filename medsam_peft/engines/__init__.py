"""Pieces that plug tuned SAM models into MONAI's SupervisedTrainer / SupervisedEvaluator."""

from medsam_peft.engines.distributed import (
    SameImageBatchSampler,
    ddp_wrap,
    distributed_sampler,
    needs_unused_parameter_search,
    same_image_batch_sampler,
)
from medsam_peft.engines.handlers import (
    AdapterState,
    AuxLossHandler,
    BestAdapterCheckpoint,
    EpochSummary,
    GradientClipHandler,
    MetricProgressReport,
    OverlayWriter,
    ProgressBar,
    ResumeCheckpoint,
    RngState,
    RunSettings,
    SafeMLFlowHandler,
)
from medsam_peft.engines.inferer import AutocastInferer
from medsam_peft.engines.interactive import (
    InteractivePrepareBatch,
    NumberOfClicks,
    SimulatedAnnotator,
    interactive_key_metric,
    interactive_metrics,
    round_output,
)
from medsam_peft.engines.losses import BalancedBCEWithLogitsLoss, MaskClassificationLoss, StructureLoss
from medsam_peft.engines.metrics import (
    BalancedErrorRate,
    SemanticSegmentationMetric,
    SodMetric,
    dice_score,
    lower_is_better,
)
from medsam_peft.engines.reporting import predict_volumes, write_metrics
from medsam_peft.engines.settings import check_settings
from medsam_peft.engines.workflow import (
    optimizer_groups,
    prompt_keys,
    require_datalist,
    semantic_metrics,
    tracked_params,
    train_key_metric,
    write_parameter_report,
)

__all__ = [
    "ddp_wrap",
    "distributed_sampler",
    "SameImageBatchSampler",
    "same_image_batch_sampler",
    "needs_unused_parameter_search",
    "semantic_metrics",
    "train_key_metric",
    "InteractivePrepareBatch", "NumberOfClicks", "SimulatedAnnotator", "interactive_key_metric", "interactive_metrics",
    "round_output",
    "MaskClassificationLoss",
    "SemanticSegmentationMetric",
    "AdapterState", "AutocastInferer", "AuxLossHandler", "BestAdapterCheckpoint", "BalancedBCEWithLogitsLoss", "BalancedErrorRate",
    "EpochSummary", "GradientClipHandler", "MetricProgressReport", "OverlayWriter", "ProgressBar",
    "ResumeCheckpoint", "RngState", "RunSettings", "SafeMLFlowHandler", "SodMetric", "StructureLoss", "dice_score", "lower_is_better",
    "check_settings", "optimizer_groups", "predict_volumes", "prompt_keys", "require_datalist", "write_metrics", "tracked_params", "write_parameter_report",
]

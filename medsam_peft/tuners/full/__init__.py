"""Full fine-tuning: every parameter trains; nothing to merge."""

from medsam_peft.tuners.full.config import FullConfig
from medsam_peft.tuners.full.model import FullModel
from medsam_peft.tuners.registry import register_tuner

register_tuner("full", FullConfig, FullModel)

__all__ = ["FullConfig", "FullModel"]

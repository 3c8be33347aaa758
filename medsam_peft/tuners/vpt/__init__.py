"""Deep visual prompt tuning: learned key/value tokens in every encoder block's attention."""

from medsam_peft.tuners.registry import register_tuner
from medsam_peft.tuners.vpt.config import VptConfig
from medsam_peft.tuners.vpt.layer import PromptedAttention
from medsam_peft.tuners.vpt.model import VptModel

register_tuner("vpt", VptConfig, VptModel)

__all__ = ["PromptedAttention", "VptConfig", "VptModel"]

"""SAM-Adapter: per-block prompts generated from the patch embedding and the image's high-frequency content."""

from medsam_peft.tuners.registry import register_tuner
from medsam_peft.tuners.sam_adapter.config import SamAdapterConfig
from medsam_peft.tuners.sam_adapter.layer import PromptGenerator, PromptedBlock, PromptSource, high_pass
from medsam_peft.tuners.sam_adapter.model import SamAdapterModel

register_tuner("sam_adapter", SamAdapterConfig, SamAdapterModel)

__all__ = ["PromptGenerator", "PromptSource", "PromptedBlock", "SamAdapterConfig", "SamAdapterModel", "high_pass"]

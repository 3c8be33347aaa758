"""LoRA: low-rank updates of the encoder's fused qkv projections; mergeable."""

from medsam_peft.tuners.lora.config import LoraConfig
from medsam_peft.tuners.lora.layer import LoraLinear
from medsam_peft.tuners.lora.model import LoraModel
from medsam_peft.tuners.registry import register_tuner

register_tuner("lora", LoraConfig, LoraModel)

__all__ = ["LoraConfig", "LoraLinear", "LoraModel"]

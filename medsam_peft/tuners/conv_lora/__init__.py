"""Conv-LoRA: LoRA with a mixture of multi-scale convolution experts in the bottleneck; not mergeable."""

from medsam_peft.tuners.conv_lora.config import ConvLoraConfig
from medsam_peft.tuners.conv_lora.layer import ConvLoraLinear
from medsam_peft.tuners.conv_lora.model import ConvLoraModel
from medsam_peft.tuners.conv_lora.moe import NoisyTopOneGate, ScaleConvExpert, cv_squared, set_expert_fast_path
from medsam_peft.tuners.registry import register_tuner

register_tuner("conv_lora", ConvLoraConfig, ConvLoraModel)

__all__ = ["ConvLoraConfig", "ConvLoraLinear", "ConvLoraModel", "NoisyTopOneGate", "ScaleConvExpert", "cv_squared",
           "set_expert_fast_path"]

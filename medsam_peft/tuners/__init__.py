"""Parameter-efficient tuners for SAM, one folder each, registered by name."""

from medsam_peft.tuners import (  # noqa: F401  (registration)
    adapter,
    bitfit,
    conv_lora,
    decoder_only,
    fact,
    full,
    lora,
    lst,
    sam_adapter,
    sam_parser,
    sam_parser_lora,
    ssf,
    vpt,
)
from medsam_peft.tuners.adapter_io import AdapterLoadError, load_adapter, read_adapter, save_adapter
from medsam_peft.tuners.base import BaseTunerLayer, TunedSam, TunerConfig
from medsam_peft.tuners.conv_lora import ConvLoraConfig, ConvLoraModel
from medsam_peft.tuners.decoder_only import DecoderOnlyConfig, DecoderOnlyModel
from medsam_peft.tuners.factory import build_tuned_sam, get_tuned_model, load_tuned_sam
from medsam_peft.tuners.lora import LoraConfig, LoraModel
from medsam_peft.tuners.registry import list_tuners, make_tuner_config, register_tuner
from medsam_peft.tuners.sam_parser import SamParserConfig, SamParserModel

__all__ = [
    "AdapterLoadError",
    "BaseTunerLayer",
    "ConvLoraConfig",
    "ConvLoraModel",
    "DecoderOnlyConfig",
    "DecoderOnlyModel",
    "LoraConfig",
    "LoraModel",
    "SamParserConfig",
    "SamParserModel",
    "TunedSam",
    "TunerConfig",
    "build_tuned_sam",
    "get_tuned_model",
    "list_tuners",
    "load_adapter",
    "load_tuned_sam",
    "make_tuner_config",
    "read_adapter",
    "register_tuner",
    "save_adapter",
]

"""SAM-PARSER combined with LoRA: coefficients of the neck's bases plus low-rank updates that add new bases."""

from medsam_peft.tuners.registry import register_tuner
from medsam_peft.tuners.sam_parser_lora.config import SamParserLoraConfig
from medsam_peft.tuners.sam_parser_lora.model import SamParserLoraModel

register_tuner("sam_parser_lora", SamParserLoraConfig, SamParserLoraModel)

__all__ = ["SamParserLoraConfig", "SamParserLoraModel"]

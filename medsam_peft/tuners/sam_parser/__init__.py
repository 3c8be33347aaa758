"""SAM-PARSER: train the singular values of SVD-factored pretrained weights; mergeable."""

from medsam_peft.tuners.registry import register_tuner
from medsam_peft.tuners.sam_parser.config import SamParserConfig
from medsam_peft.tuners.sam_parser.layer import SvdCoefficientLayer
from medsam_peft.tuners.sam_parser.model import SamParserModel

register_tuner("sam_parser", SamParserConfig, SamParserModel)

__all__ = ["SamParserConfig", "SamParserModel", "SvdCoefficientLayer"]

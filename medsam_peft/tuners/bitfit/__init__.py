"""BitFit: train the encoder's bias terms (and the mask decoder); nothing to merge."""

from medsam_peft.tuners.bitfit.config import BitFitConfig
from medsam_peft.tuners.bitfit.model import BitFitModel
from medsam_peft.tuners.registry import register_tuner

register_tuner("bitfit", BitFitConfig, BitFitModel)

__all__ = ["BitFitConfig", "BitFitModel"]

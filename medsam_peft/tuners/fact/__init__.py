"""FacT-TT: weight updates of all targeted layers factored through two matrices shared by the whole encoder."""

from medsam_peft.tuners.fact.config import FactConfig
from medsam_peft.tuners.fact.layer import FactorisedLinear, SharedFactors
from medsam_peft.tuners.fact.model import FactModel
from medsam_peft.tuners.registry import register_tuner

register_tuner("fact", FactConfig, FactModel)

__all__ = ["FactConfig", "FactModel", "FactorisedLinear", "SharedFactors"]

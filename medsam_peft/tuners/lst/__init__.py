"""Ladder side tuning: a narrow trainable side network fed by the frozen encoder's block outputs."""

from medsam_peft.tuners.lst.config import LstConfig
from medsam_peft.tuners.lst.layer import LadderTap, SideFusion, SideNetwork
from medsam_peft.tuners.lst.model import LstModel
from medsam_peft.tuners.registry import register_tuner

register_tuner("lst", LstConfig, LstModel)

__all__ = ["LadderTap", "LstConfig", "LstModel", "SideFusion", "SideNetwork"]

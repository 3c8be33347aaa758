"""SSF: learned per-channel scale and shift after every encoder operation; mergeable."""

from medsam_peft.tuners.registry import register_tuner
from medsam_peft.tuners.ssf.config import SsfConfig
from medsam_peft.tuners.ssf.layer import ScaleShiftLayer
from medsam_peft.tuners.ssf.model import SsfModel

register_tuner("ssf", SsfConfig, SsfModel)

__all__ = ["ScaleShiftLayer", "SsfConfig", "SsfModel"]

"""Houlsby adapters: a residual bottleneck MLP after the attention and after the MLP of every encoder block."""

from medsam_peft.tuners.adapter.config import AdapterConfig
from medsam_peft.tuners.adapter.layer import BottleneckAdapter
from medsam_peft.tuners.adapter.model import AdapterModel
from medsam_peft.tuners.registry import register_tuner

register_tuner("adapter", AdapterConfig, AdapterModel)

__all__ = ["AdapterConfig", "AdapterModel", "BottleneckAdapter"]

"""Decoder-only fine-tuning: the image encoder stays frozen, the mask decoder trains; nothing to merge."""

from medsam_peft.tuners.decoder_only.config import DecoderOnlyConfig
from medsam_peft.tuners.decoder_only.model import DecoderOnlyModel
from medsam_peft.tuners.registry import register_tuner

register_tuner("decoder_only", DecoderOnlyConfig, DecoderOnlyModel)

__all__ = ["DecoderOnlyConfig", "DecoderOnlyModel"]

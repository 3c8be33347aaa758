from __future__ import annotations

from typing import ClassVar

from medsam_peft.tuners.base import TunedSam


class DecoderOnlyModel(TunedSam):
    """Only the base's freezing and ``trainable_modules``: no adapter layer, nothing to merge."""

    prefix: ClassVar[str] = ""

from __future__ import annotations

from typing import ClassVar

from medsam_peft.tuners.base import TunedSam


class FullModel(TunedSam):
    """Only the base's ``trainable_modules`` (everything): no adapter layer, nothing to merge."""

    prefix: ClassVar[str] = ""

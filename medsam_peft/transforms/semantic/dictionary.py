"""Dictionary version of ``medsam_peft.transforms.semantic.array``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.config import KeysCollection
from monai.transforms import MapTransform

from medsam_peft.transforms.semantic.array import SemanticFromQueries


class SemanticFromQueriesd(MapTransform):
    """Dictionary version of ``SemanticFromQueries``: replaces each key's {"masks", "classes"} by (C, H, W)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = SemanticFromQueries()

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d

"""The checkpoint view of a tuned model: only its trainable tensors, in the adapter-file layout."""

from __future__ import annotations

from typing import Any

from medsam_peft.tuners.adapter_io import adapter_payload, apply_adapter_state
from medsam_peft.tuners.base import TunedSam


class AdapterState:
    """Checkpoint view of a tuned model: ``state_dict`` holds only the trainable tensors and the tuner metadata.

    Give it to MONAI's ``CheckpointSaver`` / ``CheckpointLoader`` (``save_dict={"model": AdapterState(net)}``) so
    run checkpoints stay a few MB and load with ``weights_only=True``.
    """

    def __init__(self, network: TunedSam) -> None:
        self.network = network

    def state_dict(self) -> dict[str, Any]:
        # the adapter-file layout (with its tensor checksum), so a best checkpoint is itself a loadable adapter file
        return adapter_payload(self.network)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        apply_adapter_state(self.network, state.get("metadata", {}), state.get("state_dict", {}), "checkpoint")

"""The checkpoint view of a run's training recipe: resuming a run under other settings is refused, not mixed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class RunSettings:
    """The settings that decide what a run trains (backbone, tuner and its options, the optimiser's recipe, the
    prompts and the simulated annotator, the seed), kept in the resume checkpoint.

    ``load_state_dict`` raises ``ValueError`` naming each setting whose value differs from the file's, so that
    ``ResumeCheckpoint`` refuses to continue a run under other settings (``--multimask False`` into the folder of a
    run that trained multimask would otherwise report the old run's metrics as if they were the new one's). Settings
    that may change between the parts of one run are left out by the caller: ``max_epochs`` (training on), the
    number of processes, workers, device and precision (another machine), logging and output.
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        # JSON-normalised (tuples as lists, paths as strings), so the file holds plain strings for weights_only loads
        self.settings = {str(k): json.loads(json.dumps(v, sort_keys=True, default=str)) for k, v in settings.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"json": json.dumps(self.settings, sort_keys=True)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = json.loads(state["json"])
        differing = [key for key in sorted(set(saved) & set(self.settings)) if saved[key] != self.settings[key]]
        if differing:
            raise ValueError(", ".join(f"{key} {json.dumps(saved[key])} in the file, {json.dumps(self.settings[key])} "
                                       f"now" for key in differing))

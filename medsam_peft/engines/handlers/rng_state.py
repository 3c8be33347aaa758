"""Every random stream a training epoch draws from, as a checkpointable object."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _numpy_state_to_tensors(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_tensors(state: dict[str, Any]) -> tuple:
    return (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["cached"])


def _randomizable_parts(transform: Any) -> list[Any]:
    """Every object with its own ``R`` (numpy RandomState) inside a (nested) Compose, including wrapped helpers."""
    from monai.transforms import Randomizable

    found, stack = [], [transform]
    while stack:
        item = stack.pop(0)
        if isinstance(item, Randomizable) and hasattr(item, "R"):
            found.append(item)
        stack.extend(getattr(item, "transforms", ()) or ())
        stack.extend(v for v in getattr(item, "__dict__", {}).values() if isinstance(v, Randomizable))
    return found


class RngState:
    """``state_dict``/``load_state_dict`` over every random stream a training epoch draws from: torch (CPU and
    CUDA), NumPy, Python ``random`` and the ``R`` of each random transform of the training preprocessing. Saved as
    tensors and plain numbers so checkpoints load with ``weights_only=True``."""

    def __init__(self, transform: Any = None) -> None:
        self.parts = _randomizable_parts(transform) if transform is not None else []

    def state_dict(self) -> dict[str, Any]:
        import random

        version, internal, gauss = random.getstate()
        state = {"torch": torch.get_rng_state(), "numpy": _numpy_state_to_tensors(np.random.get_state()),
                 "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                            "gauss": gauss},
                 "transforms": [_numpy_state_to_tensors(p.R.get_state()) for p in self.parts]}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import random

        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        np.random.set_state(_numpy_state_from_tensors(state["numpy"]))
        python = state["python"]
        random.setstate((python["version"], tuple(int(v) for v in python["internal"]), python["gauss"]))
        if len(state["transforms"]) != len(self.parts):
            raise ValueError(f"checkpoint holds {len(state['transforms'])} transform random states, the training "
                             f"preprocessing has {len(self.parts)}: it was saved with a different transform chain")
        for part, part_state in zip(self.parts, state["transforms"]):
            part.R.set_state(_numpy_state_from_tensors(part_state))

"""Tuner registry: name -> (config class, model class); each tuner folder registers itself on import."""

from __future__ import annotations

from typing import Any

from medsam_peft.errors import ConfigError, UnknownNameError
from medsam_peft.tuners.base import TunedSam, TunerConfig

TUNERS: dict[str, tuple[type[TunerConfig], type[TunedSam]]] = {}


def register_tuner(name: str, config_cls: type[TunerConfig], model_cls: type[TunedSam]) -> None:
    """Register a tuner; its name must be lower snake case, unique, and equal to ``config_cls.tuner_type``."""
    if name != name.lower() or name.endswith("_") or not name.replace("_", "").isalnum():
        raise ValueError(f"tuner name {name!r} must be lower snake case")
    if name in TUNERS:
        raise ValueError(f"tuner {name!r} is already registered")
    if config_cls.tuner_type != name:
        raise ValueError(f"{config_cls.__name__}.tuner_type is {config_cls.tuner_type!r}, expected {name!r}")
    # A tuple prefix combines layers of registered tuners (SAM-PARSER + LoRA); a new string prefix must be unique.
    prefixes = {m.prefix for _, m in TUNERS.values() if isinstance(m.prefix, str) and m.prefix}
    if isinstance(model_cls.prefix, str) and model_cls.prefix in prefixes:
        raise ValueError(f"parameter prefix {model_cls.prefix!r} of tuner {name!r} is already in use")
    TUNERS[name] = (config_cls, model_cls)


def list_tuners() -> list[str]:
    return sorted(TUNERS)


def get_tuner_classes(name: str) -> tuple[type[TunerConfig], type[TunedSam]]:
    try:
        return TUNERS[name]
    except KeyError:
        raise UnknownNameError(f"unknown tuner {name!r}; choose one of {list_tuners()}") from None


def make_tuner_config(tuner: str | dict[str, Any] | TunerConfig, **options: Any) -> TunerConfig:
    """A config from a name plus options, a dict with a ``"tuner"`` key (as saved in adapter files), or a config."""
    if isinstance(tuner, TunerConfig):
        if options:
            raise ValueError("options cannot be combined with a ready TunerConfig")
        return tuner
    if isinstance(tuner, dict):
        options = {**tuner, **options}
        if "tuner" not in options:
            raise ConfigError(f"tuner options {sorted(options)} lack the 'tuner' key naming the tuner")
        tuner = options.pop("tuner")
    config_cls, _ = get_tuner_classes(str(tuner))
    return config_cls.from_dict(options)

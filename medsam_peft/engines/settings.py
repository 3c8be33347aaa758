"""Up-front checks of a bundle's top-level settings: the first step of every workflow's ``initialize``.

A wrong value (``--learning_rate abc``, ``--max_epochs 0``, ``--resume false``) or a misspelt override
(``--max_epoch 3``) stops the run before anything is built, with one line naming the key and the fix
(``ConfigError``, exit code 2 on the command line), instead of a type error deep inside PyTorch after minutes of
set-up, or a silently ignored key.
"""

from __future__ import annotations

import ast
import difflib
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from medsam_peft.errors import ConfigError

# The ``monai.bundle run`` arguments that are not config overrides.
RUN_ARGUMENTS = frozenset({"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking",
                           "args_file"})
# Accepted on every command line although no config defines it: shows tracebacks (see utils/user_errors.py).
GLOBAL_OVERRIDES = frozenset({"debug"})

Check = Callable[[str, Any], None]


def _fail(key: str, wanted: str, value: Any) -> None:
    hint = ""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        hint = f" (on the command line write --{key} {value.capitalize()}: '{value}' is read as a string)"
    raise ConfigError(f"setting {key!r} must be {wanted}, got {value!r}{hint}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int | None = None) -> Check:
    def check(key: str, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
            _fail(key, "an integer" + (f" >= {minimum}" if minimum is not None else ""), value)
    return check


def number(minimum: float | None = None, positive: bool = False, optional: bool = False) -> Check:
    def check(key: str, value: Any) -> None:
        if value is None and optional:
            return
        if not _is_number(value) or (positive and value <= 0) or (minimum is not None and value < minimum):
            wanted = "a positive number" if positive else "a number" + (f" >= {minimum}" if minimum is not None else "")
            _fail(key, wanted + (" or null" if optional else ""), value)
    return check


def fraction(key: str, value: Any) -> None:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        _fail(key, "a number in [0, 1]", value)


def boolean(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(key, "True or False", value)


def one_of(*choices: Any) -> Check:
    def check(key: str, value: Any) -> None:
        if value not in choices:
            _fail(key, "one of " + ", ".join(repr(c) for c in choices), value)
    return check


def text(optional: bool = False, nonempty: bool = True) -> Check:
    def check(key: str, value: Any) -> None:
        if value is None and optional:
            return
        if not isinstance(value, (str, os.PathLike)) or (nonempty and not str(value)):
            _fail(key, "a non-empty string" + (" or null" if optional else ""), value)
    return check


def mapping(key: str, value: Any) -> None:
    if not isinstance(value, Mapping):
        _fail(key, "a JSON object (dict)", value)


def _backbone(key: str, value: Any) -> None:
    from medsam_peft.models.registry import list_backbones

    one_of(*list_backbones())(key, value)


def _tuner(key: str, value: Any) -> None:
    from medsam_peft.tuners.registry import list_tuners

    one_of(*list_tuners())(key, value)


def _trunk_cache(key: str, value: Any) -> None:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        _fail(key, "'off', 'auto', 'memory' or a folder for cache files", value)


def _precision(key: str, value: Any) -> None:
    one_of("auto", "bfloat16", "float16", "float32", None)(key, value)


def _mask_tokens(key: str, value: Any) -> None:
    if value is not None and value != "reference" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        _fail(key, "'reference' (the tuner paper's decoder), null (SAM's four tokens) or an integer >= 1", value)


def _query_init(key: str, value: Any) -> None:
    from medsam_peft.models.promptable_sam import QUERY_INITS  # torch is imported only once a check needs it

    one_of(*QUERY_INITS, None)(key, value)


def _num_classes(key: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
        _fail(key, "null (binary masks) or the number of classes counting the background, an integer >= 2", value)


SETTINGS: dict[str, Check] = {
    "backbone": _backbone,
    "checkpoint": text(optional=True, nonempty=False),
    "tuner": _tuner,
    "tuner_options": mapping,
    "mask_tokens": _mask_tokens,
    "num_classes": _num_classes,
    "query_init": _query_init,
    "image_size": integer(16),
    "squash": boolean,
    "max_epochs": integer(1),
    "batch_size": integer(1),
    "accumulation_steps": integer(1),
    "learning_rate": number(minimum=0.0),
    "weight_decay": number(minimum=0.0),
    "max_grad_norm": number(positive=True, optional=True),
    "precision": _precision,
    "trunk_cache": _trunk_cache,
    "activation_checkpointing": boolean,
    "attention": one_of("auto", "eager", "sdpa", "chunked"),
    "cpu_allocator": one_of("reuse", "system"),
    "distributed": boolean,
    "group_by_image": boolean,
    "train_box_jitter": integer(0),
    "mask_threshold": number(optional=True),
    "early_stop_patience": integer(0),
    "resume": boolean,
    "num_workers": integer(0),
    "overlays": integer(0),
    "seed": integer(0),
    "dataset_name": text(),
    "dataset_dir": text(),
    "output_dir": text(),
    "experiment_name": text(),
    "run_name": text(optional=True),
    "tracking_uri": text(optional=True),
    "key_metric": text(),
    # the simulated annotator of configs/prompts.json::interactive: without these a misspelt value would be read by
    # Python's truth test (--multimask false is the string 'false', which is true)
    "clicks": integer(1),
    "box_probability": fraction,
    "max_corrections": integer(0),
    "centre_probability": fraction,
    "multimask": boolean,
    "supervise_every_round": boolean,
    "hard_negatives": integer(0),
    "click_radius": number(minimum=0.0),
}


def _check_tuner_options(settings: Mapping[str, Any]) -> None:
    """Build the tuner's config from its options (cheap, no model): an unknown or out-of-range option is named now."""
    if "tuner" not in settings or not isinstance(settings.get("tuner_options", {}), Mapping):
        return
    from medsam_peft.tuners.registry import make_tuner_config

    try:
        make_tuner_config(settings["tuner"], **dict(settings.get("tuner_options") or {}))
    except (ConfigError, TypeError) as err:
        # a bundle's tuner_options are written for its own tuner, so '--tuner lora' on a Conv-LoRA bundle lands here
        hint = (f" (a bundle's tuner_options are for its own tuner: add --tuner_options '{{}}' for {settings['tuner']}'s "
                "defaults)") if "unknown option" in str(err) else ""
        raise ConfigError(f"setting 'tuner_options' for tuner {settings['tuner']!r}: {err}{hint}") from None


def _check_tuner_fits_the_backbone(settings: Mapping[str, Any]) -> None:
    """Tuners written for SAM's ViT blocks (VPT, FacT, LST, SAM-Adapter) cannot wrap LiteMedSAM's TinyViT: refused
    here, before the model is built and the output folder made."""
    if "tuner" not in settings or "backbone" not in settings:
        return
    from medsam_peft.models.registry import get_backbone_spec
    from medsam_peft.tuners.registry import get_tuner_classes

    config_class = get_tuner_classes(settings["tuner"])[0]
    if config_class.requires_vit_encoder and get_backbone_spec(settings["backbone"]).kind != "vit":
        raise ConfigError(f"setting 'tuner': {settings['tuner']!r} needs a SAM ViT image encoder (vit_b, vit_l, vit_h, "
                          f"MedSAM); backbone {settings['backbone']!r} is a TinyViT. Use lora, conv_lora, adapter, ssf, "
                          "bitfit, full, decoder_only or sam_parser with it, or --backbone vit_b")


def _check_decoder_shape(settings: Mapping[str, Any]) -> None:
    """num_classes needs explicit query tokens: checked here so a bad pair fails before the model is built."""
    from medsam_peft.models.promptable_sam import check_decoder_shape, reference_queries

    tokens, classes, query_init = settings.get("mask_tokens"), settings.get("num_classes"), settings.get("query_init")
    if classes is None or (tokens == "reference" and "tuner" not in settings):
        return
    if tokens == "reference":
        from medsam_peft.tuners.registry import get_tuner_classes

        tokens = reference_queries(get_tuner_classes(settings["tuner"])[0].reference_mask_tokens, classes, query_init)
    try:
        check_decoder_shape(tokens, classes, query_init)
    except ConfigError as err:
        raise ConfigError(f"settings 'mask_tokens' / 'num_classes' / 'query_init': {err}") from None


def _check_image_size(settings: Mapping[str, Any]) -> None:
    if "backbone" not in settings or settings.get("image_size") is None:
        return
    from medsam_peft.models.registry import get_backbone_spec

    spec, size = get_backbone_spec(settings["backbone"]), settings["image_size"]
    if spec.fixed_image_size and size != spec.image_size:
        raise ConfigError(f"setting 'image_size': {settings['backbone']} only runs at {spec.image_size}, got {size}")
    if size % spec.patch_size:
        raise ConfigError(f"setting 'image_size' must be a multiple of {spec.patch_size} for {settings['backbone']}, "
                          f"got {size}")


def _check_checkpoint(settings: Mapping[str, Any]) -> None:
    value = settings.get("checkpoint")
    if "backbone" not in settings or value in (None, ""):
        return
    from medsam_peft.models.build import checkpoint_release_names

    names = checkpoint_release_names(settings["backbone"])
    if str(value) not in names and not Path(value).expanduser().is_file():
        raise ConfigError(f"setting 'checkpoint': {value} is not a file; give the path of a downloaded .pth file, "
                          + (f"a release name of {settings['backbone']} ({', '.join(names)}), " if names else "")
                          + "or '' for random weights")


def _split_config_files(value: str) -> list[str]:
    text_value = value.strip()
    if text_value.startswith("["):
        try:
            return [str(v) for v in ast.literal_eval(text_value)]
        except (ValueError, SyntaxError):
            return []
    return [v for v in text_value.split(",") if v] if "," in text_value and not Path(text_value).is_file() else [text_value]


def command_line_overrides(argv: list[str] | None = None) -> tuple[list[str], list[str]] | None:
    """The config files and the override keys of a ``python -m monai.bundle run`` command line, or None when this
    process was not started that way (a Python caller's overrides are its own business)."""
    argv = sys.argv if argv is None else argv
    if not argv or not str(argv[0]).replace("\\", "/").endswith("monai/bundle/__main__.py"):
        return None
    if len(argv) < 2 or argv[1] != "run":
        return None
    files: list[str] = []
    keys: list[str] = []
    index = 2
    while index < len(argv):
        token = argv[index]
        if token.startswith("--") and len(token) > 2:
            name, has_value, value = token[2:].partition("=")
            if not has_value and index + 1 < len(argv) and not argv[index + 1].startswith("--"):
                value, index = argv[index + 1], index + 1
            if name == "config_file":
                files = _split_config_files(value)
            elif name not in RUN_ARGUMENTS:
                keys.append(name)
        index += 1
    return files, keys


def _root_key(override: str) -> str:
    return override.replace("::", "#").split("#", 1)[0]


def check_overrides(config_files: Iterable[str], overrides: Iterable[str]) -> None:
    """Refuse overrides of keys that none of ``config_files`` defines: a typo would otherwise be a silent no-op."""
    from monai.bundle import ConfigParser

    known: set[str] = set(GLOBAL_OVERRIDES)
    for file in config_files:
        try:
            known |= {_root_key(k.lstrip("+")) for k in ConfigParser.load_config_file(file)}
        except (OSError, ValueError):
            return  # MONAI itself reports unreadable config files
    for key in overrides:
        root = _root_key(key.replace("-", "_"))
        if root not in known:
            close = difflib.get_close_matches(root, sorted(known), n=1)
            suggestion = f"did you mean --{close[0]}? " if close else ""
            raise ConfigError(f"unknown setting --{key}: no config file of this run ({', '.join(config_files)}) "
                              f"defines {root!r}; {suggestion}see the bundle's keys for what can be overridden")


def check_settings(settings: Mapping[str, Any], argv: list[str] | None = None) -> None:
    """Check the given top-level settings (types, ranges, names, tuner options) and, for a ``monai.bundle run``
    command line, that every override names a key of the run's config files.

    Raises:
        ConfigError: naming the first wrong key, what it must be and how to write it.
    """
    command = command_line_overrides(argv)
    if command is not None:
        check_overrides(*command)
    for key, value in settings.items():
        check = SETTINGS.get(key)
        if check is not None:
            check(key, value)
    _check_image_size(settings)
    _check_checkpoint(settings)
    _check_tuner_options(settings)
    _check_tuner_fits_the_backbone(settings)
    _check_decoder_shape(settings)
    _check_loss_fits_the_decoder(settings)


def _check_loss_fits_the_decoder(settings: Mapping[str, Any]) -> None:
    """``num_classes`` on a binary bundle (or a binary loss with it) would fail deep inside the first step."""
    if "loss" not in settings or settings.get("num_classes") is None:
        return
    from medsam_peft.engines.losses import MaskClassificationLoss

    if not isinstance(settings["loss"], MaskClassificationLoss):
        raise ConfigError(
            f"setting 'num_classes' = {settings['num_classes']} makes the decoder multi-class, but this bundle's loss "
            f"is {type(settings['loss']).__name__} on binary masks: run a multi-class bundle "
            "(bundles/conv_lora_demo_multiclass.json, conv_lora_trans10k.json) or set --loss "
            "%configs/losses.json::mask_classification with class-id labels")


__all__ = ["SETTINGS", "check_overrides", "check_settings", "command_line_overrides"]

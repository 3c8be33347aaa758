"""``medsam-peft`` command line: thin wrappers that turn arguments into calls of the package's functions."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def _parse_value(text: str) -> Any:
    """Tuner option values from the command line: JSON where it parses (numbers, booleans, null), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _tuner_options(pairs: Sequence[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--option expects KEY=VALUE, got {pair!r}")
        options[key.replace("-", "_")] = _parse_value(value)
    return options


def cmd_params(args: argparse.Namespace) -> int:
    from medsam_peft.tuners import build_tuned_sam

    options = _tuner_options(args.option)
    if args.rank is not None:
        options["r"] = args.rank
    # The meta device builds the structure without allocating weights: ViT-H counts in a second.
    model = build_tuned_sam(args.backbone, None, args.tuner, image_size=args.image_size, device="meta",
                            tuner_options=options)
    report = model.parameter_report()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"backbone  {report['backbone']}")
    print(f"tuner     {report['tuner']}")
    print(f"trainable {report['trainable']:,}")
    print(f"total     {report['total']:,}")
    print(f"ratio     {100 * report['ratio']:.2f}%")
    for group, count in report["trainable_by_group"].items():
        print(f"  {group:<14}{count:,}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsam-peft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    params = sub.add_parser("params", help="count trainable and total parameters of a backbone + tuner")
    params.add_argument("--backbone", default="vit_b")
    params.add_argument("--tuner", default="conv_lora")
    params.add_argument("--image-size", type=int, default=None)
    params.add_argument("--rank", type=int, default=None, help="shortcut for --option r=N")
    params.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="tuner option")
    params.add_argument("--json", action="store_true")
    params.set_defaults(func=cmd_params)

    for name, register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Other modules add sub-commands here (data preparation, bundle export) without this file importing them eagerly.
_EXTRA_COMMANDS: list[tuple[str, Callable[[Any], None]]] = []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (KeyError, ValueError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"medsam-peft {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

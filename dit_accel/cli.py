"""The ``dit-accel`` command line. Each command lives in its own module with a ``register`` function."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

# Modules that add a sub-command through ``register(subparsers)``.
COMMAND_MODULES = ("dit_accel.bench", "dit_accel.compare", "dit_accel.aligned_report")


def _list_methods(args: argparse.Namespace) -> int:
    from dit_accel import list_methods
    from dit_accel.registry import get_method

    for name in list_methods():
        spec = get_method(name)
        print(f"{name:12s} {spec.description}")
        if args.verbose:
            print(f"{'':12s} options: {', '.join(spec.config_cls.option_names())}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dit-accel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="list the attention methods and their options")
    listing.add_argument("-v", "--verbose", action="store_true", help="also print each method's options")
    listing.set_defaults(func=_list_methods)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())

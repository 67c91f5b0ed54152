"""Sparse and editing attention for Diffusers video and image models: compare a method with dense
attention on a prompt, list the methods, time kernels, measure style-aligned batches.

examples:
  dit-accel list -v                                   the methods and their options
  dit-accel compare --method topk -o density=0.25     dense vs topk on the shipped tiny model
                                                      (on a CPU: a small size, about a minute)
  dit-accel demo                                      the web demo on http://127.0.0.1:7860
  dit-accel compare --help                            every option of a command

A mistake in the input prints one line and exits with status 2; add --debug (anywhere on the line)
for the full traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Commands whose module is imported only when the command runs (they import torch and diffusers):
# name -> (module with a ``register(subparsers)`` function, one-line summary for ``dit-accel --help``).
LAZY_COMMANDS = {
    "compare": ("dit_accel.compare", "dense vs a method on the same prompt and seed: PSNR, SSIM, speedup, video"),
    "generate": ("dit_accel.generate", "one video or image with a method, on one GPU or N (--gpus N, torchrun)"),
    "sweep": ("dit_accel.sweep", "several methods vs dense over many prompt/seed pairs: mean PSNR, SSIM, speedup"),
    "bench": ("dit_accel.bench", "time attention kernels and whole transformer forwards (GPU)"),
    "record": ("dit_accel.recorder", "record q/k/v of chosen layers and steps (for bench kernel --recorded)"),
    "aligned-report": ("dit_accel.aligned_report", "a FLUX batch with and without AlignedGen, style metrics"),
    "ir-diffusion": ("dit_accel.ir_cli", "a FLUX batch of subject references and scenes, the subjects kept consistent"),
    "attencraft-masks": ("dit_accel.attencraft_cli", "AttenCraft's concept masks of one FLUX generation (no training)"),
    "attencraft-train": ("dit_accel.attencraft_train_cli", "AttenCraft: LoRA adapters for the concepts of one image"),
    "compose": ("dit_accel.compose_cli", "put an object into a background image with PrimeComposer (FLUX)"),
    "demo": ("dit_accel.demo", "the web demo: dense vs any method (videos, metrics, block map), style batches"),
    "finetune-sla": ("dit_accel.finetune_sla", "fine-tune a Wan model for sla (distil its dense self)"),
}
# Exit status of a user error, as argparse uses for a bad command line.
USAGE_ERROR = 2
# Errors that come from what the user gave (bad options, sizes, model folders), not from a bug.
USER_ERRORS = (ValueError, TypeError, OSError)


def _list_methods(args: argparse.Namespace) -> int:
    from dit_accel import list_methods
    from dit_accel.registry import get_method

    for name in list_methods():
        spec = get_method(name)
        print(f"{name:12s} {spec.description}")
        if args.verbose:
            print(f"{'':12s} options: {', '.join(spec.config_class.option_names())}")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported, the others appear by name and summary."""
    parser = argparse.ArgumentParser(
        prog="dit-accel", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="on an error, print the full traceback")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = sub.add_parser("list", help="list the attention methods (and with -v their options)")
    listing.add_argument("-v", "--verbose", action="store_true", help="also print each method's options")
    listing.set_defaults(func=_list_methods)
    for name, (module, summary) in LAZY_COMMANDS.items():
        if name == command:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user error prints ``dit-accel: error: ...`` and returns 2 (``--debug``: raises)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    args.argv = argv  # what a command relaunches under torchrun (--gpus N)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"dit-accel: error: {' '.join(str(error).split())}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("dit-accel: stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

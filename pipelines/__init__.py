"""Per-model adapters: which attention modules dit-accel takes over and how."""

from __future__ import annotations

# This folder is installed as ``dit_accel.pipelines``. From a checkout's root Python can also see it as a
# top-level package (transformers probes for Hugging Face's ``kernels`` by importing it); imported
# under that name it stays empty, so nothing is imported or registered twice and no import cycle
# through transformers can start here.
if __name__ == "dit_accel.pipelines":
    from .registry import *  # noqa: F403
    from .registry import __all__  # noqa: F401

"""Where the project's tiny models ship: the Wan text-to-video model (the demo's and ``compare``'s
default) and the FLUX text-to-image model (the editors' test-bed, the style tab's default).

The weights are plain Diffusers pipeline folders (``WanPipeline`` / ``FluxPipeline.from_pretrained``).
They live in the repository's ``assets/`` (not part of the wheel); the code that trains them lives in
``tools/tiny_wan/`` and ``tools/tiny_flux/`` (not installed either): ``python -m tools.tiny_wan.train ...``.
"""

from __future__ import annotations

from pathlib import Path

# Where the trained weights live in a source checkout.
TINY_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny-wan-t2v"
# The tiny FLUX (``FluxPipeline``, 128x128, trained by ``tools/tiny_flux/``).
TINY_FLUX_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny-flux"
# Written beside the weights by the training script: the keyword arguments of a native-size call.
GENERATION_DEFAULTS_FILE = "generation_defaults.json"

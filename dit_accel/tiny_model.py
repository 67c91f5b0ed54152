"""Where the project's tiny text-to-video Wan model ships: the demo's and ``compare``'s default model.

The weights are a plain Diffusers ``WanPipeline`` folder, loaded with ``WanPipeline.from_pretrained``.
They live in the repository's ``assets/`` (not part of the wheel); the code that trains them lives in
``tools/tiny_wan/`` (not installed either): ``python -m tools.tiny_wan.train --out DIR --minutes M``.
"""

from __future__ import annotations

from pathlib import Path

# Where the trained weights live in a source checkout.
TINY_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny-wan-t2v"
# Written beside the weights by the training script: the keyword arguments of a native-size call.
GENERATION_DEFAULTS_FILE = "generation_defaults.json"

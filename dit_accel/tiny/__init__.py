"""A small text-to-video Wan model trained here on procedural data: the demo's default model and an
honest test-bed for attention methods against dense.

``data`` holds the caption grammar, the renderer and the video reader; ``text`` the tokenizer and text
encoder; ``build`` the model configs and the pipeline; ``train`` the training script
(``python -m dit_accel.tiny.train --out DIR --minutes M``).
"""

from __future__ import annotations

from pathlib import Path

# Where the trained weights live in a source checkout (``assets/`` is not part of the wheel).
TINY_MODEL_DIR = Path(__file__).resolve().parents[2] / "assets" / "tiny-wan-t2v"
# Written beside the weights by the training script: the keyword arguments of a native-size call.
GENERATION_DEFAULTS_FILE = "generation_defaults.json"

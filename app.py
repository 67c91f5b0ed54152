"""dit-accel web demo, for ``python app.py`` (Hugging Face Spaces and the like); the same as ``dit-accel demo``.

    python app.py                                          # the shipped tiny Wan model, offline
    python app.py --model black-forest-labs/FLUX.1-dev --share

The page itself is :mod:`dit_accel.demo_app`; ``python app.py --help`` lists the options.
"""

from __future__ import annotations

import sys

from dit_accel.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["demo", *sys.argv[1:]]))

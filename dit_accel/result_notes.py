"""What a comparison's numbers do not say by themselves: where the method ran dense, and why, and
when it was slower than dense. Shown beside the result by the CLI and the demo."""

from __future__ import annotations

import math
from typing import Any


def result_notes(result: Any) -> list[str]:
    """Notes on a :class:`~dit_accel.compare.ComparisonResult`, most important first."""
    notes = [
        f"{result.method} ran dense for {calls} attention call(s): {reason}"
        for reason, calls in result.dense_fallbacks.items()
    ]
    if math.isinf(result.psnr) and result.method != "dense" and not notes:
        notes.append(
            f"{result.method}'s frames are identical to dense: at this size it changed nothing "
            "(too few tokens for its blocks?); try more frames or a larger size"
        )
    if result.transformer_speedup < 1.0:
        why = (
            ": on a CPU every method runs its PyTorch reference implementation, which is slower than dense "
            "attention; the speedups come from the GPU kernels"
            if result.device.startswith("cpu")
            else ""
        )
        notes.append(f"{result.method} was slower than dense ({result.transformer_speedup:.2f}x){why}")
    return notes

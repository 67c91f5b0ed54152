"""How much one head's attention over a key set moved between two steps (FlashBlock's calibration).

Given the partial attention ``(out, lse)`` of the same queries' rows over the same key range at two
denoising steps, per head: the mean over rows of the cosine between the two outputs and the mean
absolute LSE change. Rows that saw no key at either step (LSE ``-inf``) are left out; a head with no
such row counts as unchanged.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def head_drift(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """Per head ``(H,)`` fp32: mean row cosine of ``out_a`` vs ``out_b`` ``(B, H, S, D)``, mean ``|lse_a - lse_b|``."""
    live = torch.isfinite(lse_a) & torch.isfinite(lse_b)
    count = live.sum(dim=(0, 2)).clamp_min(1)
    cosine = torch.nn.functional.cosine_similarity(out_a.float(), out_b.float(), dim=-1)
    mean_cosine = torch.where(live, cosine, 0.0).sum(dim=(0, 2)) / count
    change = torch.where(live, (lse_a.float() - lse_b.float()).abs(), 0.0).sum(dim=(0, 2)) / count
    none = live.sum(dim=(0, 2)) == 0
    return torch.where(none, 1.0, mean_cosine), torch.where(none, 0.0, change)

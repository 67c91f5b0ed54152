"""3-D tile order: a permutation whose blocks are compact space-time neighbourhoods."""

from __future__ import annotations

import pytest
import torch

from dit_accel.layout import TokenLayout
from dit_accel.tiling import default_tile, tile_permutation, tiled_rows


@pytest.mark.parametrize(
    ("grid", "tile"), [((21, 30, 52), (2, 8, 8)), ((3, 9, 11), (1, 4, 4)), ((1, 7, 5), (1, 16, 8))]
)
def test_tile_order_is_a_permutation_with_compact_full_tiles(grid, tile):
    perm = tile_permutation(grid, tile)
    t, h, w = grid
    assert torch.equal(perm.sort().values, torch.arange(t * h * w))
    coords = torch.stack([perm // (h * w), perm // w % h, perm % w], dim=1)
    volume = tile[0] * tile[1] * tile[2]
    first = coords[:volume]
    extent = first.max(0).values - first.min(0).values + 1
    assert extent.tolist() == [min(a, b) for a, b in zip(tile, grid, strict=True)]


def test_default_tile_matches_block_volume():
    assert default_tile((21, 30, 52), 128) == (2, 8, 8)
    assert default_tile((1, 64, 64), 128) == (1, 16, 8)
    assert default_tile((5, 8, 8), 64) == (1, 8, 8)
    for block in (16, 32, 64, 128, 256):
        tile = default_tile((9, 40, 40), block)
        assert tile[0] * tile[1] * tile[2] == block


def test_tiled_rows_offset_and_fallback_order():
    rows = tiled_rows(6, 99, (1, 9, 11), (1, 4, 4), "cpu")
    assert rows.dtype == torch.int32 and rows.min() == 6 and rows.max() == 104
    assert torch.equal(tiled_rows(3, 10, None, (1, 4, 4), "cpu"), torch.arange(3, 13, dtype=torch.int32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seq_len": 10, "video_start": 4, "video_len": 8}, "exceeds seq_len"),
        ({"seq_len": 10, "video_start": 0, "video_len": 10, "text_start": 5, "text_len": 2}, "overlap"),
        ({"seq_len": 12, "video_start": 0, "video_len": 12, "grid": (2, 2, 2)}, "has 8 tokens"),
        ({"seq_len": 4, "video_start": 0, "video_len": -1}, "must be >= 0"),
        ({"seq_len": 4, "video_start": 0, "video_len": 4, "appended_len": 3, "appended_grid": (1, 2, 2)}, "appended"),
    ],
)
def test_layout_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenLayout(**kwargs)

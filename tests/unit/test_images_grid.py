"""Sample grids: make_grid tiles a batch, split_grid reads a saved grid back (the report's redraw)."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from ldm_system.images import make_grid, split_grid, to_uint8


@pytest.mark.parametrize("channels", [1, 3])
def test_a_saved_grid_reads_back_exactly(tmp_path, channels):
    images = torch.rand(16, channels, 12, 12, generator=torch.Generator().manual_seed(0)) * 2 - 1
    make_grid(images, nrow=8).save(tmp_path / "g.png")
    back = split_grid(Image.open(tmp_path / "g.png"), nrow=8)
    assert back.shape == images.shape
    assert (to_uint8(back) == to_uint8(images)).all()  # lossless at the saved 8 bits


def test_a_short_last_row_comes_back_as_white_tiles_and_a_non_grid_is_refused():
    grid = make_grid(torch.zeros(10, 1, 6, 6), nrow=8)
    back = split_grid(grid, nrow=8)
    assert back.shape == (16, 1, 6, 6)
    assert (to_uint8(back[:10]) == 128).all() and (back[10:] == 1).all()  # 0 is mid-grey, 128 in 8 bits
    with pytest.raises(ValueError, match="not a grid of 8 square tiles"):
        split_grid(Image.new("L", (101, 50)), nrow=8)

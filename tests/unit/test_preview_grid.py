"""The pieces of a labelled preview grid: which buckets are shown, how labels wrap, the canvas layout."""
from __future__ import annotations

import numpy as np
import torch

from ldm_system.train.diffusion_preview import preview_buckets
from ldm_system.train.preview_grid import PAD, GridSection, LabelledGrid, _font, render_grid, wrap_label


def test_the_widest_the_most_populated_and_the_tallest_bucket_are_previewed_wide_to_tall():
    buckets = [{"width": 8, "height": 8, "count": 40}, {"width": 12, "height": 6, "count": 3},
               {"width": 6, "height": 12, "count": 2}, {"width": 10, "height": 8, "count": 5},
               {"width": 16, "height": 4, "count": 0}]  # an empty bucket is never shown
    assert preview_buckets(buckets, 4) == [(4, 6, 12), (4, 8, 8), (4, 12, 6)]
    assert preview_buckets([{"width": 8, "height": 8, "count": 1}], 3) == [(3, 8, 8)]
    assert preview_buckets([], 3) == []


def test_labels_wrap_at_spaces_onto_two_lines_and_a_cut_tail_ends_in_dots():
    font = _font()
    assert wrap_label(font, "Bag", 60) == ["Bag"]
    text = "a long coat with a hood and two pockets"
    lines = wrap_label(font, text, 50)
    assert len(lines) == 2 and lines[1].endswith("..")
    assert all(font.getbbox(line)[2] - font.getbbox(line)[0] <= 50 for line in lines)
    words = lines[0].split()
    assert words == text.split()[:len(words)]  # broken at a space, never inside a word
    width = font.getbbox("T-shirt/")[2] + 2  # "T-shirt/top" does not fit: broken after its slash
    assert wrap_label(font, "T-shirt/top", width) == ["T-shirt/", "top"]


def test_sections_of_different_widths_share_one_white_padded_canvas_with_labels_under_the_columns():
    wide = GridSection(torch.zeros(2, 1, 8, 16), columns=2, title="32x16")
    tall = GridSection(torch.zeros(2, 1, 16, 8), columns=2, title="16x32")
    image = np.asarray(render_grid(LabelledGrid([wide, tall], ["Bag", "Coat"])))
    scale = 48 // 8  # the narrowest cell (8 px) is upscaled to 48 px
    assert image.shape[1] == 2 * (16 * scale + PAD) + PAD  # the wider section sets the canvas width
    assert image[:, -PAD:].min() == 255  # the right border stays white
    tall_right = image[-10:, 2 * (8 * scale + PAD) + PAD:]  # right of the tall section's labels: padding
    assert tall_right.min() == 255
    assert (image < 128).sum() > 0

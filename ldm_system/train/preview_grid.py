"""Labelled preview grids: sections of image rows (one section per bucket size) on one canvas, each
column's label (a class name, a prompt) drawn under it with PIL's built-in bitmap font (nothing is
downloaded).

    ┌ 12x8 ───────────────┐     title: the section's image size (bucketed models only)
    │ img img img img     │     rows × columns, column j conditioned on labels[j]
    │ img img img img     │
    │ Bag Coat Sneaker …  │     labels, wrapped to the cell width (two lines at most)
    ├ 8x8 ────────┐       │
    │ ...         │       │     narrower sections are padded with white
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ldm_system.images import make_grid, to_uint8

PAD = 2  # pixels between cells
MIN_CELL = 48  # small images are upscaled (nearest) to at least this width, so that labels fit
LINES = 2  # label lines per column


@dataclass(frozen=True)
class GridSection:
    images: torch.Tensor  # (rows · columns, C, H, W) in [-1, 1], row-major
    columns: int
    title: str = ""  # drawn above the section ("" = none)


@dataclass(frozen=True)
class LabelledGrid:
    sections: list[GridSection]
    labels: list[str] = field(default_factory=list)  # one per column ([] = unlabelled)

    def render(self) -> Image.Image:
        return render_grid(self)


def _font() -> ImageFont.ImageFont:
    # Pillow >= 10.1: load_default() may return a FreeType font; the bitmap one is always bundled
    bitmap = getattr(ImageFont, "load_default_imagefont", None)
    return bitmap() if bitmap is not None else ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text or " ")
    return right - left, bottom - top


def wrap_label(font, text: str, width: int, lines: int = LINES) -> list[str]:
    """`text` cut into at most `lines` lines no wider than `width` pixels, at spaces (or after a slash)
    where one fits; a cut-off tail ends in "..".
    The bitmap font covers Latin-1: other characters become "?"."""
    text = text.encode("latin-1", "replace").decode("latin-1")
    out, rest = [], text
    while rest and len(out) < lines:
        n = len(rest)
        while n > 1 and _text_size(font, rest[:n])[0] > width:
            n -= 1
        if n < len(rest) and " " in rest[1:n + 1]:  # break at the last space that fits
            n = rest.rindex(" ", 1, n + 1)
        elif n < len(rest) and "/" in rest[1:n]:  # or after the last slash ("T-shirt/" "top")
            n = rest.rindex("/", 1, n) + 1
        out.append(rest[:n])
        rest = rest[n:].lstrip()
    if rest and out:
        last = out[-1]
        while len(last) > 1 and _text_size(font, last + "..")[0] > width:
            last = last[:-1]
        out[-1] = last + ".."
    return out


def render_grid(grid: LabelledGrid) -> Image.Image:
    """One PIL image ("L" for grayscale, else "RGB") holding every section, labels under each."""
    font = _font()
    line_h = _text_size(font, "Ag")[1] + 2
    channels = grid.sections[0].images.shape[1]
    scale = max(1, math.ceil(MIN_CELL / min(s.images.shape[-1] for s in grid.sections)))
    blocks = [_section(s, scale) for s in grid.sections]
    label_h = LINES * line_h + PAD if grid.labels else 0
    title_h = line_h + PAD if any(s.title for s in grid.sections) else 0
    width = max(b.shape[1] for b in blocks)
    height = sum(title_h + b.shape[0] + label_h for b in blocks)
    canvas = Image.new("L" if channels == 1 else "RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for s, block in zip(grid.sections, blocks):
        if title_h:
            draw.text((PAD, y + 1), s.title, fill=0, font=font)
            y += title_h
        canvas.paste(Image.fromarray(block[..., 0] if channels == 1 else block), (0, y))
        y += block.shape[0]
        if grid.labels:
            cell = s.images.shape[-1] * scale
            for j, label in enumerate(grid.labels[: s.columns]):
                for k, line in enumerate(wrap_label(font, label, cell)):  # never into the next column
                    draw.text((PAD + j * (cell + PAD), y + 1 + k * line_h), line, fill=0, font=font)
            y += label_h
    return canvas


def _section(s: GridSection, scale: int) -> np.ndarray:
    """(rows·(h+PAD)+PAD, cols·(w+PAD)+PAD, C) uint8 tile of the section's images, white gaps."""
    arr = to_uint8(s.images)  # (B, H, W, C)
    arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    b, h, w, c = arr.shape
    rows = math.ceil(b / s.columns)
    out = np.full((rows * (h + PAD) + PAD, s.columns * (w + PAD) + PAD, c), 255, dtype=np.uint8)
    for i in range(b):
        r, q = divmod(i, s.columns)
        out[PAD + r * (h + PAD): PAD + r * (h + PAD) + h, PAD + q * (w + PAD): PAD + q * (w + PAD) + w] = arr[i]
    return out


def as_image(preview: torch.Tensor | LabelledGrid) -> Image.Image:
    """What a task's `preview` returned, as one image: a plain (B, C, H, W) batch is tiled as it
    always was (`make_grid`: near-square, no labels, no upscaling)."""
    return preview.render() if isinstance(preview, LabelledGrid) else make_grid(preview)


__all__ = ["GridSection", "LabelledGrid", "as_image", "render_grid", "wrap_label"]

"""Colour-mode policy and square resize/crop used by both packing and streaming."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from ldm_system.data.transforms import (
    crop_box,
    hflip,
    resize_and_crop,
    resize_shorter,
    to_channels,
    to_tensor_pm1,
)


def test_alpha_is_composited_on_white() -> None:
    img = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (0, 0, 255, 128))  # half-transparent blue
    rgb = to_channels(img, 3)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    r, g, b = rgb.getpixel((1, 0))
    assert abs(r - 127) <= 1 and abs(g - 127) <= 1 and b == 255
    la = Image.new("LA", (1, 1), (0, 0))
    assert to_channels(la, 1).getpixel((0, 0)) == 255


def test_modes_map_to_l_or_rgb() -> None:
    gray = Image.new("L", (3, 3), 100)
    assert to_channels(gray, 3).getpixel((1, 1)) == (100, 100, 100)
    rgb = Image.new("RGB", (3, 3), (255, 0, 0))
    assert to_channels(rgb, 1).getpixel((0, 0)) == 76  # ITU-R 601-2 luma: 0.299 * 255
    assert to_channels(Image.new("1", (2, 2), 1), 1).getpixel((0, 0)) == 255
    deep = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert to_channels(deep, 1).getpixel((0, 0)) == 255
    assert to_channels(Image.new("CMYK", (2, 2)), 3).mode == "RGB"
    with pytest.raises(ValueError, match="channels must be one of"):
        to_channels(gray, 2)


def test_resize_shorter_and_crop() -> None:
    wide = Image.new("RGB", (100, 50))
    assert resize_shorter(wide, 20).size == (40, 20)
    assert resize_shorter(Image.new("RGB", (50, 100)), 20).size == (20, 40)
    assert resize_and_crop(wide, 20).size == (20, 20)
    assert resize_and_crop(Image.new("L", (28, 28)), 32).size == (32, 32)  # upscales small images
    assert crop_box(40, 20, 20, "center") == (10, 0, 30, 20)
    boxes = {crop_box(40, 20, 20, "random", random.Random(s)) for s in range(50)}
    assert len(boxes) > 5 and all(0 <= b[0] <= 20 and b[1] == 0 for b in boxes)
    with pytest.raises(ValueError, match="crop must be one of"):
        crop_box(40, 20, 20, "middle")
    with pytest.raises(ValueError, match="cannot crop"):
        crop_box(10, 10, 20, "center")


def test_tensor_range_shape_and_flip() -> None:
    arr = np.array([[0, 255], [128, 64]], dtype=np.uint8)
    t = to_tensor_pm1(Image.fromarray(arr))
    assert t.shape == (1, 2, 2) and t.dtype == torch.float32
    assert t[0, 0, 0] == -1.0 and t[0, 0, 1] == 1.0
    rgb = to_tensor_pm1(Image.new("RGB", (3, 2)))
    assert rgb.shape == (3, 2, 3)
    assert np.asarray(hflip(Image.fromarray(arr))).tolist() == [[255, 0], [64, 128]]

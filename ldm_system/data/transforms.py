"""Image conversions shared by packing and streaming: colour-mode policy, resize, crop, flip.

Colour-mode policy (one rule for every source):
  * Everything becomes 8-bit "L" (channels=1) or "RGB" (channels=3). Nothing else is stored.
  * Transparency (RGBA, LA, PA, and P with a transparency entry) is composited over opaque white
    first, so a transparent background never turns black.
  * P (palette), 1 (bilevel), CMYK and YCbCr go through RGB. 16-bit and 32-bit grayscale (I;16, I)
    are scaled from [0, 65535] to [0, 255]; float (F) is clipped to [0, 255].
  * RGB -> L uses Pillow's ITU-R 601-2 luma; L -> RGB repeats the gray value in the three channels.

Geometry: `resize_shorter` scales the shorter side to `size` (aspect ratio kept, Lanczos, which
antialiases when shrinking); `crop_box` then cuts a `size` x `size` square (center or random).
Tensors come out as float32 (C, H, W) in [-1, 1] (the loader converts whole uint8 batches at once).

`fit_image` applies both, colour first, and is the only entry point: the packer, the streaming
decoder and every file or upload the model reads (`ldm_system.images`) go through it, so an image
given to `ldm invert` or the server is prepared exactly as the training images were.
"""
from __future__ import annotations

import io
from typing import Protocol

import numpy as np
import torch
from PIL import Image


class RandomLike(Protocol):
    """What a random crop needs: `random.Random` or `rng.KeyedRandom`."""

    def randint(self, a: int, b: int) -> int: ...


CHANNEL_MODES = {1: "L", 3: "RGB"}
CROP_MODES = ("center", "random")
WHITE = 255
_U16_TO_U8 = 257.0  # 65535 / 255
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_RESAMPLE = Image.Resampling.LANCZOS
# Level 6 is zlib's default; for the small images this system stores it is both compact and fast.
PNG_COMPRESS_LEVEL = 6


def check_channels(channels: int) -> str:
    if channels not in CHANNEL_MODES:
        raise ValueError(f"channels must be one of {sorted(CHANNEL_MODES)}, got {channels!r}")
    return CHANNEL_MODES[channels]


def has_alpha(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)


def to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow image to 8-bit L (channels=1) or RGB (channels=3); see module policy."""
    target = check_channels(channels)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64) / _U16_TO_U8
        img = Image.fromarray(np.clip(arr, 0, WHITE).astype(np.uint8))
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, WHITE).astype(np.uint8))
    if has_alpha(img):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (WHITE, WHITE, WHITE, WHITE))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode == target:
        return img
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")  # P, 1, CMYK, YCbCr, HSV, LAB
    return img.convert(target)


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Scale so that the shorter side is `size` (aspect ratio kept). No-op when it already is."""
    w, h = img.size
    if min(w, h) == size:
        return img
    # max(size, ...) keeps the longer side from rounding below `size`.
    if w <= h:
        new = (size, max(size, round(h * size / w)))
    else:
        new = (max(size, round(w * size / h)), size)
    return img.resize(new, _RESAMPLE)


def crop_box(
    width: int, height: int, size: int, mode: str, rng: RandomLike | None = None
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a `size` square inside a width x height image."""
    if size > width or size > height:
        raise ValueError(f"cannot crop {size}x{size} from a {width}x{height} image")
    if mode == "center":
        left, top = (width - size) // 2, (height - size) // 2
    elif mode == "random":
        if rng is None:
            raise ValueError("random crop needs an rng")
        left = rng.randint(0, width - size)
        top = rng.randint(0, height - size)
    else:
        raise ValueError(f"crop must be one of {CROP_MODES}, got {mode!r}")
    return left, top, left + size, top + size


def resize_and_crop(
    img: Image.Image, size: int, mode: str = "center", rng: RandomLike | None = None
) -> Image.Image:
    """Shorter side to `size`, then a `size` x `size` crop: the standard square-image recipe."""
    img = resize_shorter(img, size)
    box = crop_box(img.width, img.height, size, mode, rng)
    return img if box == (0, 0, img.width, img.height) else img.crop(box)


def fit_image(
    img: Image.Image, channels: int, size: int | None = None, crop: str = "center", rng: RandomLike | None = None
) -> Image.Image:
    """The one geometry/colour policy: colour mode first (alpha over white), then, with `size`, shorter
    side to `size` (Lanczos) and a square crop. Compositing before resizing keeps transparent edges
    from bleeding dark fringes into the resampled pixels."""
    img = to_channels(img, channels)
    return img if size is None else resize_and_crop(img, size, crop, rng)


def hflip(img: Image.Image) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit L/RGB image -> uint8 tensor (C, H, W)."""
    arr = np.array(img, dtype=np.uint8)  # a writable copy, (H, W) or (H, W, C)
    if arr.ndim == 2:
        arr = arr[:, :, None]  # (H, W) -> (H, W, 1)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def uint8_to_pm1(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1]: x / 127.5 - 1. Applied per batch, not per image."""
    return x.to(torch.float32).div_(127.5).sub_(1.0)


def to_tensor_pm1(img: Image.Image) -> torch.Tensor:
    """8-bit L/RGB image -> float32 tensor (C, H, W) in [-1, 1]."""
    return uint8_to_pm1(to_uint8_tensor(img))


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes fully (load() forces errors in truncated files to surface here)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img

"""Images in and out of the serving layer: files and base64 PNG ↔ (B, C, H, W) tensors in [-1, 1].

Size policy (shared with `ldm_system.images.load_image` and the data packer): an image whose size
differs from the model's is resized so that its *shorter* side equals the model size (bicubic), then
centre-cropped to a square. The CLI always applies it (and says so on stderr); the HTTP server
applies it only when the request asks (`"resize": true`) and otherwise rejects the image, because a
silent crop of a client's picture is a surprise over an API.
"""
from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldm_system.images import to_uint8


@dataclass(frozen=True)
class LoadedImage:
    tensor: torch.Tensor  # (1, C, size, size) in [-1, 1]
    original_size: tuple[int, int]  # (width, height) before the size policy

    @property
    def resized(self) -> bool:
        side = self.tensor.shape[-1]
        return self.original_size != (side, side)


def resize_and_center_crop(im: Image.Image, size: int) -> Image.Image:
    """Shorter side → `size` (bicubic), then the centre size x size square (same rule as load_image)."""
    w, h = im.size
    if (w, h) == (size, size):
        return im
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def pil_to_tensor(im: Image.Image, channels: int) -> torch.Tensor:
    """PIL image → (1, C, H, W) float in [-1, 1]; colour mode converted to L (C = 1) or RGB (C = 3)."""
    im = im.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_pils(images: torch.Tensor) -> list[Image.Image]:
    """(B, C, H, W) in [-1, 1] → B PIL images (grayscale stays "L")."""
    arr = to_uint8(images)
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


def open_image_file(path: str | Path, size: int, channels: int) -> LoadedImage:
    """Read one image file for the model, with the size policy above. Clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            original = im.size
            im = resize_and_center_crop(im.convert("L" if channels == 1 else "RGB"), size)
    except Exception as e:  # PIL raises OSError subclasses, DecompressionBombError, SyntaxError, ...
        raise ValueError(f"cannot read image {path}: {e}") from None
    return LoadedImage(pil_to_tensor(im, channels), original)


def save_pngs(images: torch.Tensor, paths: list[Path]) -> list[Path]:
    if len(paths) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(paths)} paths")
    for im, p in zip(tensor_to_pils(images), paths):
        p.parent.mkdir(parents=True, exist_ok=True)
        im.save(p)
    return paths


# ---- base64 (the HTTP server) -----------------------------------------------------------------
class ImageDecodeError(ValueError):
    """The payload is not a usable image (bad base64, not an image, corrupt, too large)."""


class ImageSizeError(ImageDecodeError):
    """A valid image of the wrong size (and resizing was not requested)."""


def tensor_to_b64png(images: torch.Tensor) -> list[str]:
    out = []
    for im in tensor_to_pils(images):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def b64_to_tensor(data: str, size: int, channels: int, resize: bool = False, max_side: int = 2048,
                  name: str = "image") -> torch.Tensor:
    """Decode a base64 image (PNG, JPEG, …; an optional `data:image/...;base64,` prefix is accepted).

    `max_side` bounds the *declared* size before any pixel is decoded, so a tiny upload that claims to
    be 50 000 x 50 000 is refused without allocating it.
    """
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ImageDecodeError(f"{name}: not valid base64") from None
    if not raw:
        raise ImageDecodeError(f"{name}: empty image")
    try:
        im = Image.open(io.BytesIO(raw))
    except Exception:  # UnidentifiedImageError, DecompressionBombError, ...: all mean "not usable"
        raise ImageDecodeError(f"{name}: not a decodable image (PNG or JPEG expected)") from None
    w, h = im.size
    if max(w, h) > max_side:
        raise ImageDecodeError(f"{name}: {w}x{h} exceeds the server limit of {max_side} pixels per side")
    if (w, h) != (size, size) and not resize:
        raise ImageSizeError(
            f"{name}: is {w}x{h}, the model takes {size}x{size}; send that size or set \"resize\": true "
            "(shorter side resized, then centre-cropped)"
        )
    try:
        im.load()
    except Exception as e:
        raise ImageDecodeError(f"{name}: corrupt image data ({e})") from None
    return pil_to_tensor(resize_and_center_crop(im.convert("L" if channels == 1 else "RGB"), size), channels)


__all__ = [
    "ImageDecodeError", "ImageSizeError", "LoadedImage", "b64_to_tensor", "open_image_file", "pil_to_tensor", "resize_and_center_crop",
    "save_pngs", "tensor_to_b64png", "tensor_to_pils",
]

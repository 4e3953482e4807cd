"""The server's image codec: base64 PNG/JPEG ↔ (B, C, H, W) tensors in [-1, 1].

Files, PIL images and the size/colour policy live in `ldm_system.images` (which follows the packer's
`data.transforms.fit_image`); the names serving code has always imported from here are handed on
unchanged. The CLI always applies the policy (and says so on stderr); the HTTP server applies it
only when the request asks (`"resize": true`) and otherwise rejects an image of another size,
because a silent crop of a client's picture is a surprise over an API.
"""
from __future__ import annotations

import base64
import binascii
import io

import torch
from PIL import Image

from ldm_system.images import (
    LoadedImage,
    fit_to_shape,
    fit_to_tensor,
    kept_shape,
    open_image_file,
    pil_to_tensor,
    resize_and_center_crop,
    save_pngs,
    tensor_to_pils,
)


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


def b64_bytes(data: str, name: str = "image") -> bytes:
    """The bytes of a base64 upload (an optional `data:image/...;base64,` prefix is accepted)."""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ImageDecodeError(f"{name}: not valid base64") from None
    if not raw:
        raise ImageDecodeError(f"{name}: empty image")
    return raw


def _open(raw: bytes, max_side: int, name: str) -> Image.Image:
    """An encoded image opened (not yet decoded), its declared size checked against `max_side`."""
    try:
        im = Image.open(io.BytesIO(raw))
    except Exception:  # UnidentifiedImageError, DecompressionBombError, ...: all mean "not usable"
        raise ImageDecodeError(f"{name}: not a decodable image (PNG or JPEG expected)") from None
    w, h = im.size
    if max(w, h) > max_side:
        raise ImageDecodeError(f"{name}: {w}x{h} exceeds the server limit of {max_side} pixels per side")
    return im


def _load(im: Image.Image, name: str) -> Image.Image:
    try:
        im.load()
    except Exception as e:
        raise ImageDecodeError(f"{name}: corrupt image data ({e})") from None
    return im


def bytes_to_tensor(raw: bytes, size: int, channels: int, resize: bool = False, max_side: int = 2048,
                    name: str = "image") -> torch.Tensor:
    """Decode an encoded image (PNG, JPEG, …) for the model: exactly size x size, or with `resize` the
    resize policy. `max_side` bounds the *declared* size before any pixel is decoded, so a tiny
    upload that claims to be 50 000 x 50 000 is refused without allocating it."""
    im = _open(raw, max_side, name)
    w, h = im.size
    if (w, h) != (size, size) and not resize:
        raise ImageSizeError(
            f"{name}: is {w}x{h}, the model takes {size}x{size}; send that size or set \"resize\": true "
            "(shorter side resized, then centre-cropped), or \"keep_shape\": true (any size, aspect kept)"
        )
    return fit_to_tensor(_load(im, name), size, channels)


def b64_to_tensor(data: str, size: int, channels: int, resize: bool = False, max_side: int = 2048,
                  name: str = "image") -> torch.Tensor:
    """`bytes_to_tensor` of a base64 upload."""
    return bytes_to_tensor(b64_bytes(data, name), size, channels, resize, max_side, name)


def bytes_to_kept_shape(raw: bytes, size: int, channels: int, step: int, height: int | None = None,
                        width: int | None = None, max_side: int = 2048, name: str = "image") -> torch.Tensor:
    """Decode an encoded image keeping its aspect: about size² pixels with sides multiples of `step`
    (`images.kept_shape`, the buckets' rule), or height x width where given."""
    im = _load(_open(raw, max_side, name), name)
    return fit_to_shape(im, kept_shape(im.width, im.height, size, step, height, width), channels)


__all__ = [
    "ImageDecodeError", "ImageSizeError", "LoadedImage", "b64_bytes", "b64_to_tensor", "bytes_to_kept_shape", "bytes_to_tensor", "open_image_file", "pil_to_tensor", "resize_and_center_crop",
    "save_pngs", "tensor_to_b64png", "tensor_to_pils",
]

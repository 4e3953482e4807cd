"""What the server checks in an uploaded image before any pixel is decoded: its format and its size.

Only PNG, JPEG and WebP are taken, recognised by their first bytes (other formats PIL could open,
such as GIF, BMP or TIFF, are refused with 415). The pixel count is read from the header: an
image that declares more than the server's `max_input_pixels` (a decompression bomb: a small file
that claims 50 000 x 50 000 pixels) is refused with 413 without allocating it. The rest (the side
limit, the size policy, the decode) is `image_io.bytes_to_tensor`.
"""
from __future__ import annotations

import io
import warnings

from PIL import Image

from ldm_system.serving.image_io import ImageDecodeError

ACCEPTED = "PNG, JPEG or WebP"
_OTHER_FORMATS = ((b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
                  (b"\x00\x00\x01\x00", "ICO"), (b"%PDF", "PDF"), (b"<svg", "SVG"), (b"<?xml", "XML/SVG"))


class UploadRejected(ValueError):
    """An upload refused before decoding; `status` is the HTTP status that says why (413, 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def image_format(raw: bytes) -> str | None:
    """"PNG" | "JPEG" | "WEBP" from the magic bytes; None for anything else."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if raw.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "WEBP"
    return None


def check_upload(raw: bytes, max_pixels: int, name: str = "image") -> None:
    """Refuse an upload (its bytes, `image_io.b64_bytes`) that is not PNG/JPEG/WebP (415) or declares
    more than `max_pixels` pixels (413). An unreadable header raises ImageDecodeError (400)."""
    fmt = image_format(raw)
    if fmt is None:
        other = next((label for magic, label in _OTHER_FORMATS if raw.startswith(magic)), None)
        if other is not None:
            raise UploadRejected(415, f"{name}: {other} images are not accepted; upload {ACCEPTED}")
        raise ImageDecodeError(f"{name}: not a decodable image ({ACCEPTED} expected)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            w, h = Image.open(io.BytesIO(raw), formats=[fmt]).size  # reads the header only
    except Image.DecompressionBombError:
        raise UploadRejected(413, f"{name}: declares more than {2 * Image.MAX_IMAGE_PIXELS} pixels (a decompression "
                                  f"bomb?); the server limit is {max_pixels} pixels") from None
    except Exception:
        raise ImageDecodeError(f"{name}: not a decodable image (a damaged {fmt} header)") from None
    if w * h > max_pixels:
        raise UploadRejected(413, f"{name}: declares {w}x{h} = {w * h} pixels, over the server limit of "
                                  f"{max_pixels} pixels (max_input_pixels)")


__all__ = ["ACCEPTED", "UploadRejected", "check_upload", "image_format"]

"""Images in and out of the system: files and PIL images ↔ (B, C, H, W) tensors in [-1, 1], and grids.

Every image the model reads (a file for `ldm invert`/`edit`, an upload to the server, a held-out
test image) is prepared by the packer's policy, `ldm_system.data.transforms.fit_image`: colour mode
first (transparency composited over white, palette/CMYK/16-bit mapped to 8-bit L or RGB), then the
shorter side resized to the model size with Lanczos and the centre square cropped. Invert and edit
keep an image's shape instead (`open_image_file(..., step=)`): the shape of about size² pixels whose
sides are multiples of the model's pixel step and whose aspect is nearest the image's (the rule of
`ldm data pack --buckets`), or the height/width asked for; the image is resized to cover it and
loses only the thin remainder, cropped evenly.

Why the packer's rule and not serving's former bicubic + plain `convert`: the model only knows the
training distribution, so an image it inverts or edits must be prepared the way its training images
were. An RGBA picture with a transparent background was packed on white; a plain convert drops the
alpha channel and shows whatever colour the hidden pixels hold (often black). Lanczos is the wider
antialiasing kernel the shards were resized with; bicubic gives slightly different pixels.

Tensors going out (`to_uint8`, PNGs, grids) map [-1, 1] to uint8 by (x + 1) * 127.5, rounded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldm_system.data.buckets import DEFAULT_MAX_ASPECT, fit_to_bucket
from ldm_system.data.transforms import fit_image, resize_and_crop, to_channels, to_tensor_pm1


# ---- tensor → pixels --------------------------------------------------------------------------
def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] → (B, H, W, C) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def tensor_to_pils(images: torch.Tensor) -> list[Image.Image]:
    """(B, C, H, W) in [-1, 1] → B PIL images (grayscale stays "L")."""
    arr = to_uint8(images)
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


def save_pngs(images: torch.Tensor, paths: list[Path]) -> list[Path]:
    if len(paths) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(paths)} paths")
    for im, p in zip(tensor_to_pils(images), paths):
        p.parent.mkdir(parents=True, exist_ok=True)
        im.save(p)
    return paths


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> Image.Image:
    """Tile a batch into one PIL image; grayscale stays grayscale."""
    if images.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(images.shape)}")
    arr = to_uint8(images)
    b, h, w, c = arr.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(b))))
    ncol = int(math.ceil(b / nrow))
    canvas = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(b):
        r, q = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y : y + h, x : x + w] = arr[i]
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas)


def split_grid(grid: Image.Image, nrow: int, pad: int = 2) -> torch.Tensor:
    """The inverse of `make_grid` for square tiles: a saved grid back to (B, C, H, W) in [-1, 1]
    (all nrow × rows tiles; a short last row comes back as white tiles)."""
    arr = np.asarray(grid)
    arr = arr[..., None] if arr.ndim == 2 else arr
    tile = (arr.shape[1] - pad) // nrow - pad
    if tile < 1 or nrow * (tile + pad) + pad != arr.shape[1] or (arr.shape[0] - pad) % (tile + pad):
        raise ValueError(f"a {arr.shape[1]}x{arr.shape[0]} image is not a grid of {nrow} square tiles per row "
                         f"with {pad}-pixel padding")
    rows = (arr.shape[0] - pad) // (tile + pad)
    tiles = [arr[pad + r * (tile + pad): pad + r * (tile + pad) + tile, pad + q * (tile + pad): pad + q * (tile + pad) + tile]
             for r in range(rows) for q in range(nrow)]
    return torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 127.5 - 1


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, nrow).save(path)
    return path


# ---- pixels → tensor --------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedImage:
    tensor: torch.Tensor  # (1, C, H, W) in [-1, 1]
    original_size: tuple[int, int]  # (width, height) before the size policy

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) after the size policy."""
        return int(self.tensor.shape[-1]), int(self.tensor.shape[-2])

    @property
    def resized(self) -> bool:
        return self.original_size != self.size


def pil_to_tensor(im: Image.Image, channels: int) -> torch.Tensor:
    """PIL image → (1, C, H, W) float in [-1, 1], colour mode by the policy (no resizing)."""
    return to_tensor_pm1(to_channels(im, channels)).unsqueeze(0)


def fit_to_tensor(im: Image.Image, size: int, channels: int) -> torch.Tensor:
    """PIL image → (1, C, size, size) in [-1, 1] by the whole policy (colour, resize, centre crop)."""
    return to_tensor_pm1(fit_image(im, channels, size)).unsqueeze(0)


def resize_and_center_crop(im: Image.Image, size: int) -> Image.Image:
    """The geometry half of the policy alone (shorter side → `size`, Lanczos; centre square)."""
    return resize_and_crop(im, size, "center")


def kept_shape(width: int, height: int, size: int, step: int, out_height: int | None = None,
               out_width: int | None = None, max_aspect: float = DEFAULT_MAX_ASPECT) -> tuple[int, int]:
    """(W, H) for a width x height image that keeps its aspect: sides multiples of `step`, about size²
    pixels (aspect clamped to 1:R..R:1, as buckets are); a side given in out_height/out_width is
    kept and the other follows the aspect."""
    a = min(max(width / height, 1 / max_aspect), max_aspect)

    def snap(x: float) -> int:
        return max(step, round(x / step) * step)

    if out_height is not None or out_width is not None:
        return (out_width or snap(out_height * a)), (out_height or snap(out_width / a))
    return snap(size * math.sqrt(a)), snap(size / math.sqrt(a))


def fit_to_shape(im: Image.Image, shape: tuple[int, int], channels: int) -> torch.Tensor:
    """PIL image → (1, C, H, W) in [-1, 1] for shape (W, H): colour policy, cover resize, even crop."""
    img, _ = fit_to_bucket(to_channels(im, channels), (shape,))
    return to_tensor_pm1(img).unsqueeze(0)


def open_image_file(path: str | Path, size: int, channels: int, step: int | None = None,
                    height: int | None = None, width: int | None = None) -> LoadedImage:
    """Read one image file for the model, with the policy above. Clear errors for bad files.
    Without `step`, the centre size x size square; with it, the image keeps its shape (`kept_shape`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if step is None:
                return LoadedImage(fit_to_tensor(im, size, channels), im.size)
            shape = kept_shape(im.width, im.height, size, step, height, width)
            return LoadedImage(fit_to_shape(im, shape, channels), im.size)
    except Exception as e:  # PIL raises OSError subclasses, DecompressionBombError, SyntaxError, ...
        raise ValueError(f"cannot read image {path}: {e}") from None


def load_image(path: str | Path, size: int, channels: int) -> torch.Tensor:
    """Read an image file as (1, C, size, size) in [-1, 1] (see `open_image_file`)."""
    return open_image_file(path, size, channels).tensor

"""Aspect-ratio buckets: store each image at about S x S pixels in the shape nearest its own.

Square crops throw away what does not fit the square: a 16:9 photo loses 44% of its area, a 4:1
banner 75%. Instead `ldm data pack --buckets` keeps a small list of (width, height) buckets, all
with about S^2 pixels and both sides multiples of the step K (so that every bucket divides into
latents and UNet levels), with aspect ratios from 1:R to R:1. An image goes to the bucket nearest
its aspect ratio in log space, is resized to *cover* the bucket (aspect kept) and loses only what
remains outside it, cropped evenly on both sides.

Area lost by one image of aspect a (= w / h) in a bucket of aspect b: after a cover resize the
image's longer relative side is cut by min(a, b) / max(a, b), so the fraction kept is that ratio.
With the nearest bucket in log space, the worst case sits halfway between two neighbours b1 < b2:
kept = sqrt(b1 / b2). A loss of at most 1/4 thus needs neighbours within (4/3)^2 of each other,
and the extreme buckets within 4/3 of 1:R and R:1; `bucket_list` checks that and
`worst_area_lost` measures it (pixel rounding included).

Images beyond 1:R..R:1 go to the most extreme bucket, which the nearest-in-log rule gives for free.
What each sample records (`<key>.json`, see pack.py) is what SDXL-style size conditioning needs:
the original size, the size after the cover resize and the crop offsets in that resized image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

DEFAULT_BUCKET_STEP = 8
DEFAULT_MAX_ASPECT = 4.0
# Buckets keep their area within this fraction of S^2; outside it a shape is not "about S^2 pixels".
AREA_TOLERANCE = 0.25
MAX_AREA_LOST = 0.25  # the promise for images within 1:R..R:1 (see the module docstring)
_RESAMPLE = Image.Resampling.LANCZOS


@dataclass(frozen=True)
class Placement:
    """Where one image went: bucket (w, h), the cover-resized size and the crop's top-left corner."""

    bucket: tuple[int, int]
    original: tuple[int, int]
    resized: tuple[int, int]
    crop_left: int
    crop_top: int

    @property
    def area_lost(self) -> float:
        """Fraction of the (resized) image outside the stored crop."""
        bw, bh = self.bucket
        rw, rh = self.resized
        return 1.0 - (bw * bh) / (rw * rh)

    def to_json_dict(self) -> dict[str, list[int]]:
        return {
            "bucket": list(self.bucket),
            "original_size": list(self.original),  # (width, height) of the source image
            "resized_size": list(self.resized),
            "crop_left_top": [self.crop_left, self.crop_top],  # in the resized image
        }


def bucket_list(size: int, step: int = DEFAULT_BUCKET_STEP, max_aspect: float = DEFAULT_MAX_ASPECT) -> tuple[tuple[int, int], ...]:
    """The (width, height) buckets for base side `size`, sorted by aspect ratio (tallest first).

    For every width w = K, 2K, ... the height is the multiple of K whose area is nearest S^2; a
    shape is kept when its aspect lies in 1:R..R:1 and its area within AREA_TOLERANCE of S^2.
    Raises ValueError (naming a step that works) when the list leaves an aspect gap that would cost
    some image more than MAX_AREA_LOST of its area.
    """
    if size < 1 or step < 1:
        raise ValueError(f"image size and bucket step must be >= 1, got {size} and {step}")
    if size % step:
        raise ValueError(f"--image-size {size} is not a multiple of --bucket-step {step}")
    if not max_aspect >= 1.0 or not math.isfinite(max_aspect):
        raise ValueError(f"--max-aspect must be a finite number >= 1, got {max_aspect}")
    area = size * size
    shapes: set[tuple[int, int]] = set()
    for w in range(step, int(size * math.sqrt(max_aspect)) + 2 * step, step):
        h = max(step, round(area / w / step) * step)
        aspect = w / h
        if max(aspect, 1 / aspect) > max_aspect * (1 + 1e-9):
            continue
        if abs(w * h - area) > AREA_TOLERANCE * area:
            continue
        shapes.add((w, h))
        shapes.add((h, w))
    buckets = tuple(sorted(shapes, key=lambda s: (s[0] / s[1], s[0])))
    worst = worst_area_lost(buckets, max_aspect)
    if worst > MAX_AREA_LOST + 1e-9:
        finer = max(1, step // 2)
        raise ValueError(
            f"buckets for --image-size {size} with --bucket-step {step} leave aspect gaps: some image "
            f"within 1:{max_aspect:g}..{max_aspect:g}:1 would lose {worst:.0%} of its area; use a smaller "
            f"step (e.g. --bucket-step {finer}) or a larger --image-size"
        )
    return buckets


def nearest_bucket(width: int, height: int, buckets: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest width / height in log space (ties: the first)."""
    log_a = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b[0] / b[1]) - log_a))


def place(width: int, height: int, buckets: tuple[tuple[int, int], ...]) -> Placement:
    """Cover-resize size and centered crop of a width x height image in its nearest bucket."""
    bw, bh = nearest_bucket(width, height, buckets)
    if bw / width >= bh / height:  # width binds: it matches exactly, height covers with a margin
        rw, rh = bw, max(bh, round(height * bw / width))
    else:
        rw, rh = max(bw, round(width * bh / height)), bh
    return Placement((bw, bh), (width, height), (rw, rh), (rw - bw) // 2, (rh - bh) // 2)


def fit_to_bucket(img: Image.Image, buckets: tuple[tuple[int, int], ...]) -> tuple[Image.Image, Placement]:
    """Resize `img` to cover its bucket (Lanczos, aspect kept) and crop the remainder evenly."""
    p = place(img.width, img.height, buckets)
    if p.resized != img.size:
        img = img.resize(p.resized, _RESAMPLE)
    bw, bh = p.bucket
    if p.resized != p.bucket:
        img = img.crop((p.crop_left, p.crop_top, p.crop_left + bw, p.crop_top + bh))
    return img, p


def worst_area_lost(buckets: tuple[tuple[int, int], ...], max_aspect: float, samples: int = 2001) -> float:
    """The largest area fraction any image with aspect in 1:R..R:1 loses, over a log-spaced sweep
    of aspects on a 1024-pixel longer side (fine enough that pixel rounding is negligible)."""
    worst = 0.0
    lo = -math.log(max_aspect)
    for i in range(samples):
        a = math.exp(lo + 2 * -lo * i / (samples - 1)) if max_aspect > 1 else 1.0
        w, h = (1024, max(1, round(1024 / a))) if a >= 1 else (max(1, round(1024 * a)), 1024)
        worst = max(worst, place(w, h, buckets).area_lost)
    return worst


def check_bucket_step(step: int, pixels_per_latent_step: int) -> None:
    """Training's check: every bucket side must divide into the autoencoder's f times the UNet's
    downsampling. Names a step that works."""
    if step % pixels_per_latent_step:
        good = math.lcm(step, pixels_per_latent_step)
        raise ValueError(
            f"bucket step {step} is not a multiple of {pixels_per_latent_step} (the autoencoder's f times the "
            f"UNet's downsampling); repack with --bucket-step {good} (or any multiple of {pixels_per_latent_step})"
        )


def check_latent_buckets(meta: dict, downsampling: int) -> None:
    """Training's check on bucketed latent shards (`ldm data encode` of a `--buckets` pack): the pixel
    bucket step must be a multiple of the autoencoder's f times the UNet's `downsampling`, or some
    bucket's latents do not divide into the UNet's levels. Names a step that works."""
    step, pixel, latent = meta.get("bucket_step"), meta.get("pixel_buckets"), meta.get("buckets")
    if step is None or not pixel or not latent:
        return
    # Every latent bucket is its pixel bucket / f and the counts agree, so the count-weighted widths give f.
    f = sum(b["width"] * b["count"] for b in pixel) // sum(b["width"] * b["count"] for b in latent)
    check_bucket_step(int(step), f * downsampling)

"""`ldm data pack`: turn an image source into WebDataset tar shards plus `manifest.json`.

Each sample is stored as three tar members (the WebDataset layout):
  <key>.png  the image, 8-bit L (1 channel) or RGB (3 channels), see transforms.py for the policy
  <key>.cls  the label as decimal text, "-1" when unlabelled
  <key>.txt  the caption as UTF-8 text, possibly empty

Samples are written in an order shuffled with `seed`, so every shard mixes classes even when the
source lists them class by class (a folder walk does); the loader then only needs a modest
shuffle buffer. With `image_size` set, every image is resized (shorter side) and center-cropped to
a square of that side; Fashion-MNIST's 28x28 thus becomes 32x32 by resizing, not padding.

With `buckets=True` (`--buckets`) an image keeps its shape instead: it is stored at the
aspect-ratio bucket nearest its own (about image_size^2 pixels, see buckets.py), and a fourth
member `<key>.json` records where it came from: {"bucket", "original_size", "resized_size",
"crop_left_top"}. The manifest's `meta["buckets"]` lists every bucket with its sample count, and
`meta["area_lost"]` the mean and worst fraction of an image's area the crops removed.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ldm_system.data.buckets import DEFAULT_BUCKET_STEP, DEFAULT_MAX_ASPECT, Placement, bucket_list, fit_to_bucket
from ldm_system.data.manifest import Manifest, SkippedFile
from ldm_system.data.sources.base import SkipItem, Source
from ldm_system.data.sources.registry import open_source
from ldm_system.data.transforms import encode_png, fit_image
from ldm_system.data.writer import ShardWriter

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 5000
_PROGRESS_EVERY = 10000


@dataclass(frozen=True)
class PackConfig:
    """The options of `ldm data pack`; `pack(**dataclasses.asdict(cfg))` runs it."""

    src: str
    out_dir: str
    shard_size: int = DEFAULT_SHARD_SIZE
    image_size: int | None = None
    seed: int = 0
    split: str = "train"
    channels: int | None = None  # None: 1 for fashion-mnist, 3 for folders and photos
    limit: int | None = None  # pack only the first `limit` items of the source
    num_samples: int | None = None  # builtin:photos only: how many crops
    overwrite: bool = False
    buckets: bool = False  # aspect-ratio buckets of about image_size^2 pixels instead of square crops
    bucket_step: int = DEFAULT_BUCKET_STEP  # bucket sides are multiples of this many pixels
    max_aspect: float = DEFAULT_MAX_ASPECT  # buckets span 1:max_aspect .. max_aspect:1
    caption_column: str = "text"  # the caption's column in a folder's metadata.jsonl / metadata.csv

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.buckets and self.image_size is None:
            raise ValueError("--buckets needs --image-size (the side S of the S x S pixel budget)")
        if self.bucket_step < 1:
            raise ValueError(f"bucket_step must be >= 1, got {self.bucket_step}")


def pack(
    src: str,
    out_dir: str | Path,
    shard_size: int = DEFAULT_SHARD_SIZE,
    image_size: int | None = None,
    seed: int = 0,
    split: str = "train",
    channels: int | None = None,
    limit: int | None = None,
    num_samples: int | None = None,
    overwrite: bool = False,
    buckets: bool = False,
    bucket_step: int = DEFAULT_BUCKET_STEP,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    caption_column: str = "text",
) -> Manifest:
    """Pack `src` (a folder, `builtin:fashion-mnist[:test]` or `builtin:photos`) into `out_dir`.

    Returns the manifest that was written to `out_dir/manifest.json`. Raises ValueError when not a
    single usable image was found (the message lists the first skip reasons).
    """
    cfg = PackConfig(
        src=src,
        out_dir=str(out_dir),
        shard_size=shard_size,
        image_size=image_size,
        seed=seed,
        split=split,
        channels=channels,
        limit=limit,
        num_samples=num_samples,
        overwrite=overwrite,
        buckets=buckets,
        bucket_step=bucket_step,
        max_aspect=max_aspect,
        caption_column=caption_column,
    )
    # Bad bucket flags fail here, before any file is listed or written.
    bucket_shapes = bucket_list(image_size, bucket_step, max_aspect) if buckets and image_size else None
    source = open_source(
        src, split=split, channels=channels, image_size=image_size, num_samples=num_samples, seed=seed,
        caption_column=caption_column,
    )
    if bucket_shapes is not None:
        return _pack_source(source, cfg, bucket_shapes)
    return _pack_source(source, cfg)


def _pack_source(source: Source, cfg: PackConfig, buckets: tuple[tuple[int, int], ...] | None = None) -> Manifest:
    start = time.perf_counter()
    count = len(source) if cfg.limit is None else min(len(source), cfg.limit)
    order = np.random.default_rng(cfg.seed).permutation(count)
    skipped = list(source.listing_skipped)
    sizes: set[tuple[int, int]] = set()
    placements: list[Placement] = []
    with ShardWriter(Path(cfg.out_dir), cfg.shard_size, overwrite=cfg.overwrite) as writer:
        for done, index in enumerate(order.tolist(), 1):
            try:
                item = source.load(index)
            except SkipItem as skip:
                logger.warning("skipping %s: %s", source.describe(index), skip.reason)
                skipped.append(SkippedFile(source.describe(index), skip.reason))
                continue
            entries: dict[str, bytes]
            if buckets is None:
                image = fit_image(item.image, source.channels, cfg.image_size)
                entries = {}
            else:
                image, placement = fit_to_bucket(fit_image(item.image, source.channels), buckets)
                placements.append(placement)
                entries = {"json": json.dumps(placement.to_json_dict()).encode()}
            sizes.add(image.size)
            writer.write(
                source.key(index),
                {
                    "png": encode_png(image),
                    "cls": str(item.label).encode(),
                    "txt": item.caption.encode("utf-8"),
                    **entries,
                },
            )
            if done % _PROGRESS_EVERY == 0:
                logger.info("packed %d / %d", done, count)
        writer.close()
        if writer.num_samples == 0:
            reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:5])
            raise ValueError(
                f"no usable images in {source.name!r} ({len(skipped)} inputs skipped"
                + (f": {reasons}" if reasons else "")
                + ")"
            )
        manifest = writer.write_manifest(
            source=source.name,
            split=source.split,
            kind="images",
            image_size=_square_side(sizes),
            channels=source.channels,
            classes=source.classes,
            skipped=tuple(sorted(skipped, key=lambda s: s.path)),
            seed=cfg.seed,
            meta={
                "pack_seconds": round(time.perf_counter() - start, 3),
                **getattr(source, "caption_counts", {}),
                **(_bucket_meta(cfg, buckets, placements) if buckets is not None else {}),
            },
        )
    logger.info(
        "packed %d samples into %d shards in %s (%d skipped) in %.1f s",
        manifest.num_samples,
        len(manifest.shards),
        cfg.out_dir,
        manifest.num_skipped,
        manifest.meta["pack_seconds"],
    )
    return manifest


def _square_side(sizes: set[tuple[int, int]]) -> int | None:
    """The common side when every stored image is the same square, else None."""
    if len(sizes) == 1:
        (w, h) = next(iter(sizes))
        if w == h:
            return w
    return None


def _bucket_meta(cfg: PackConfig, buckets: tuple[tuple[int, int], ...], placements: list[Placement]) -> dict:
    """The manifest's record of the buckets: every bucket with its count (0 included, so the list
    is the full set training may see), the flags that made them, and the area the crops removed."""
    counts = {b: 0 for b in buckets}
    for p in placements:
        counts[p.bucket] += 1
    lost = [p.area_lost for p in placements]
    return {
        "buckets": [{"width": w, "height": h, "count": n} for (w, h), n in counts.items()],
        "bucket_step": cfg.bucket_step,
        "max_aspect": cfg.max_aspect,
        "base_size": cfg.image_size,
        "area_lost": {"mean": round(sum(lost) / len(lost), 4), "max": round(max(lost), 4)},
    }

"""A pack source by name: an image folder path, or a built-in dataset `builtin:NAME[:SPLIT]`."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ldm_system.data.sources.base import Source
from ldm_system.data.sources.fashion_mnist import FashionMNISTSource
from ldm_system.data.sources.folder import DEFAULT_FOLDER_CHANNELS, FolderSource
from ldm_system.data.sources.photos import DEFAULT_IMAGE_SIZE, DEFAULT_NUM_SAMPLES, PhotoCropSource

BUILTIN_PREFIX = "builtin:"


def _open_fashion_mnist(
    split: str, channels: int | None, image_size: int | None, num_samples: int | None, seed: int
) -> Source:
    del image_size, seed  # resizing happens in pack; the order shuffle uses the pack seed
    if num_samples is not None:
        raise ValueError("builtin:fashion-mnist has a fixed size; use limit to pack fewer samples")
    return FashionMNISTSource(split=split, channels=1 if channels is None else channels)


def _open_photos(
    split: str, channels: int | None, image_size: int | None, num_samples: int | None, seed: int
) -> Source:
    return PhotoCropSource(
        num_samples=DEFAULT_NUM_SAMPLES if num_samples is None else num_samples,
        image_size=DEFAULT_IMAGE_SIZE if image_size is None else image_size,
        seed=seed,
        channels=3 if channels is None else channels,
        split=split,
    )


# name -> factory(split, channels, image_size, num_samples, seed)
BUILTIN_SOURCES: dict[str, Callable[..., Source]] = {
    "fashion-mnist": _open_fashion_mnist,
    "photos": _open_photos,
}


def open_source(
    src: str,
    *,
    split: str = "train",
    channels: int | None = None,
    image_size: int | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    caption_column: str = "text",
) -> Source:
    """Resolve SRC: `builtin:NAME`, `builtin:NAME:SPLIT`, or a folder path."""
    if src.startswith(BUILTIN_PREFIX):
        name, _, src_split = src[len(BUILTIN_PREFIX) :].partition(":")
        if name not in BUILTIN_SOURCES:
            raise ValueError(
                f"unknown built-in source {name!r}; available: {', '.join(sorted(BUILTIN_SOURCES))}"
            )
        if src_split and split not in ("train", src_split):
            raise ValueError(f"split given twice: {src!r} and split={split!r}")
        return BUILTIN_SOURCES[name](src_split or split, channels, image_size, num_samples, seed)
    if num_samples is not None:
        raise ValueError("num_samples applies to builtin:photos only; use limit for a folder")
    if not Path(src).is_dir():
        raise FileNotFoundError(f"pack source {src!r} is neither a folder nor a built-in "
                                f"({', '.join(BUILTIN_PREFIX + n for n in BUILTIN_SOURCES)})")
    return FolderSource(
        Path(src), channels=DEFAULT_FOLDER_CHANNELS if channels is None else channels, split=split,
        caption_column=caption_column,
    )

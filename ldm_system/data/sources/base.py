"""What the packer needs from an image source (folder, Fashion-MNIST, photo crops).

A source is an indexable list of items. Listing is cheap and happens up front; `load(i)` decodes
one item lazily and raises `SkipItem(reason)` for an input that must be skipped (empty file, not
an image, ...). The packer records those reasons in the manifest instead of crashing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from ldm_system.data.manifest import SkippedFile

UNLABELLED = -1


class SkipItem(Exception):
    """Raised by `Source.load` for an input that is skipped; `reason` goes into the manifest."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Item:
    """One decoded input. `label` is an index into the source's classes, or -1 when unlabelled."""

    image: Image.Image
    label: int = UNLABELLED
    caption: str = ""


class Source(Protocol):
    """The interface `pack` reads. `name` is what the manifest records as `source`."""

    name: str
    split: str
    classes: tuple[str, ...]
    channels: int  # channel count stored in the shards: 1 (L) or 3 (RGB)
    listing_skipped: tuple[SkippedFile, ...]  # inputs rejected while listing (e.g. stray files)

    def __len__(self) -> int: ...

    def key(self, index: int) -> str:
        """A unique WebDataset key for item `index` ([A-Za-z0-9_-], no dots)."""
        ...

    def describe(self, index: int) -> str:
        """A human-readable origin of item `index` (a file path, or a dataset index)."""
        ...

    def load(self, index: int) -> Item: ...

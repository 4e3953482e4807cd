"""An image folder as a pack source.

Rules:
  * The folder is walked recursively in sorted order. Hidden files and folders (".name") are ignored.
  * Images are matched by extension, case-insensitively: IMAGE_EXTENSIONS.
  * Labels: when the folder has first-level subfolders holding images, each such subfolder is a
    class (sorted by name, label = index) and every image below it gets that label, however deep it
    sits. Images directly in the root of a labelled folder are unlabelled (-1). Without subfolders
    nothing is labelled.
  * A `.txt` file with the same stem next to an image is its caption (UTF-8, stripped).
  * Other files (unknown extension, a caption without an image) are skipped with a reason, and so
    are images that turn out empty or undecodable when loaded. Nothing here raises on bad input.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from ldm_system.data.manifest import SkippedFile
from ldm_system.data.sources.base import UNLABELLED, Item, SkipItem
from ldm_system.data.writer import MAX_KEY_LEN

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_EXTENSION = ".txt"
DEFAULT_FOLDER_CHANNELS = 3
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-]+")


@dataclass
class FolderSource:
    """An image folder as a pack source (see the module docstring for the rules)."""

    root: Path
    channels: int = DEFAULT_FOLDER_CHANNELS
    split: str = "train"
    images: list[Path] = field(init=False)
    captions: dict[Path, Path] = field(init=False)
    item_labels: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"pack source {str(self.root)!r} is not a folder")
        self.name = str(self.root)
        self._walk()

    def _walk(self) -> None:
        images: list[Path] = []
        texts: list[Path] = []
        skipped: list[SkippedFile] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                ext = path.suffix.lower()
                if ext in IMAGE_EXTENSIONS:
                    images.append(path)
                elif ext == CAPTION_EXTENSION:
                    texts.append(path)
                else:
                    skipped.append(SkippedFile(self._rel(path), f"unsupported extension {ext or '(none)'!r}"))
        stems = {p.with_suffix("") for p in images}
        self.captions = {}
        for t in texts:
            if t.with_suffix("") in stems:
                self.captions[t.with_suffix("")] = t
            else:
                skipped.append(SkippedFile(self._rel(t), "caption without an image"))
        self.images = images
        # A first-level folder is a class only if some image lives below it.
        class_dirs = sorted({p.relative_to(self.root).parts[0] for p in images if p.parent != self.root})
        self.classes = tuple(class_dirs)
        index = {name: i for i, name in enumerate(self.classes)}
        self.item_labels = [
            UNLABELLED if p.parent == self.root else index[p.relative_to(self.root).parts[0]]
            for p in images
        ]
        self.listing_skipped = tuple(skipped)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def __len__(self) -> int:
        return len(self.images)

    def key(self, index: int) -> str:
        stem = _UNSAFE_KEY_CHARS.sub("_", self._rel(self.images[index].with_suffix("")))
        return f"{index:07d}_{stem}"[:MAX_KEY_LEN]

    def describe(self, index: int) -> str:
        return self._rel(self.images[index])

    def load(self, index: int) -> Item:
        path = self.images[index]
        try:
            if path.stat().st_size == 0:
                raise SkipItem("empty file")
            with Image.open(path) as img:
                img.load()
                # Apply the EXIF orientation so camera JPEGs are stored upright.
                image = ImageOps.exif_transpose(img)
        except SkipItem:
            raise
        except Image.UnidentifiedImageError:
            raise SkipItem("not an image: Pillow cannot identify the file") from None
        except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many exception types
            raise SkipItem(f"unreadable image: {type(exc).__name__}: {exc}") from None
        return Item(image, self.item_labels[index], self._caption(path))

    def _caption(self, image_path: Path) -> str:
        caption_path = self.captions.get(image_path.with_suffix(""))
        if caption_path is None:
            return ""
        try:
            return caption_path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""

"""An image folder as a pack source.

Rules:
  * The folder is walked recursively in sorted order. Hidden files and folders (".name") are ignored.
  * Images are matched by extension, case-insensitively: IMAGE_EXTENSIONS.
  * Labels: when the folder has first-level subfolders holding images, each such subfolder is a
    class (sorted by name, label = index) and every image below it gets that label, however deep it
    sits. Images directly in the root of a labelled folder are unlabelled (-1). Without subfolders
    nothing is labelled.
  * Captions, from three layouts (UTF-8, stripped):
      - `name.txt` next to `name.png` (kohya, most tools),
      - `name.caption` next to it (another common sidecar extension),
      - `metadata.jsonl` or `metadata.csv` at the folder root (Hugging Face imagefolder, as diffusers'
        example scripts read it): one row per image, `file_name` relative to the root plus a caption
        column, `text` unless `caption_column` names another.
    When an image has several, the most specific wins: `name.txt`, then `name.caption`, then the
    metadata row (a sidecar file belongs to that one image and is usually the newer edit). The
    manifest's `meta["captions"]` counts where each caption came from and how many images had more
    than one source. A metadata row naming a missing file is listed under `skipped`; a caption file
    that is not UTF-8 skips its image (listed); a metadata file without `file_name` or the caption
    column, or not UTF-8, is a one-line error.
  * Other files (unknown extension, a caption without an image) are skipped with a reason, and so
    are images that turn out empty or undecodable when loaded. Nothing here raises on bad input.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from ldm_system.data.manifest import SkippedFile
from ldm_system.data.sources.base import UNLABELLED, Item, SkipItem
from ldm_system.data.writer import MAX_KEY_LEN

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_EXTENSIONS = (".txt", ".caption")  # in precedence order
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
FILE_NAME_COLUMN = "file_name"
DEFAULT_FOLDER_CHANNELS = 3
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-]+")


@dataclass
class FolderSource:
    """An image folder as a pack source (see the module docstring for the rules)."""

    root: Path
    channels: int = DEFAULT_FOLDER_CHANNELS
    split: str = "train"
    caption_column: str = "text"
    images: list[Path] = field(init=False)
    captions: dict[Path, Path] = field(init=False)  # image stem -> the caption file that wins
    metadata_captions: dict[str, str] = field(init=False)  # image path relative to root -> caption
    caption_counts: dict[str, dict[str, int]] = field(init=False)
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
                elif ext in CAPTION_EXTENSIONS:
                    texts.append(path)
                elif Path(dirpath) == self.root and name in METADATA_FILES:
                    continue  # read below
                else:
                    skipped.append(SkippedFile(self._rel(path), f"unsupported extension {ext or '(none)'!r}"))
        stems = {p.with_suffix("") for p in images}
        self.captions = {}
        sidecars: dict[Path, list[str]] = {}
        # Sorted by precedence so that the first file seen for a stem is the one that wins.
        for t in sorted(texts, key=lambda t: CAPTION_EXTENSIONS.index(t.suffix.lower())):
            stem = t.with_suffix("")
            if stem in stems:
                self.captions.setdefault(stem, t)
                sidecars.setdefault(stem, []).append(t.suffix.lower())
            else:
                skipped.append(SkippedFile(self._rel(t), "caption without an image"))
        self.metadata_captions = self._read_metadata({self._rel(p) for p in images}, skipped)
        self.caption_counts = {"captions": _count_sources(images, sidecars, self.metadata_captions, self._rel)}
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

    def _read_metadata(self, present: set[str], skipped: list[SkippedFile]) -> dict[str, str]:
        """file_name -> caption from the root's metadata file; rows naming a missing image are
        listed in `skipped`. Raises ValueError (one line) on a file that cannot be read as such."""
        found = [self.root / n for n in METADATA_FILES if (self.root / n).is_file()]
        if not found:
            return {}
        if len(found) > 1:
            raise ValueError(f"{self.root} holds both {METADATA_FILES[0]} and {METADATA_FILES[1]}; keep one")
        path = found[0]
        rows = _metadata_rows(path)
        column = self.caption_column
        out: dict[str, str] = {}
        for line, row in rows:
            for needed in (FILE_NAME_COLUMN, column):
                if needed not in row:
                    hint = " (pass --caption-column NAME)" if needed == column else ""
                    raise ValueError(f"{path.name} row {line}: no column {needed!r}{hint}; "
                                     f"columns: {', '.join(map(str, row)) or '(none)'}")
            name = Path(str(row[FILE_NAME_COLUMN])).as_posix()
            if name not in present:
                skipped.append(SkippedFile(f"{path.name}:{line}:{name}", "metadata row names a missing file"))
                continue
            value = row[column]
            out[name] = "" if value is None else str(value).strip()
        return out

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
            return self.metadata_captions.get(self._rel(image_path), "")
        try:
            return caption_path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            # Not a silent empty caption: the image is skipped and the manifest says why.
            raise SkipItem(f"caption file {caption_path.name} is not UTF-8 text") from None
        except OSError as exc:
            raise SkipItem(f"caption file {caption_path.name} is unreadable: {exc.strerror}") from None


def _metadata_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a metadata.jsonl (one JSON object a line) or metadata.csv (header row)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))  # quoted fields may span lines
        # Row numbers count the header as line 1, as a spreadsheet shows them.
        return [(i, dict(row)) for i, row in enumerate(reader, 2)]
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path.name} line {i}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path.name} line {i}: expected a JSON object, got {type(row).__name__}")
        rows.append((i, row))
    return rows


def _count_sources(images: list[Path], sidecars: dict[Path, list[str]], metadata: dict[str, str], rel) -> dict[str, int]:
    """How many images took their caption from each layout, and how many had several sources."""
    counts = {"txt": 0, "caption": 0, "metadata": 0, "none": 0, "several_sources": 0}
    for p in images:
        found = [ext.lstrip(".") for ext in sidecars.get(p.with_suffix(""), [])]
        if rel(p) in metadata:
            found.append("metadata")
        counts[found[0] if found else "none"] += 1
        counts["several_sources"] += len(found) > 1
    return counts

"""The shard manifest: what a shard folder holds, written next to the shards as `manifest.json`.

The manifest is the contract between `ldm data pack` / `ldm data encode` (writers) and the streaming
loader (reader). The loader uses the shard list and per-shard counts to plan an exactly-once split of
every epoch over ranks and workers; everything else is provenance for humans and for later stages.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "ldm-system/shards"
MANIFEST_VERSION = 1
# "images": entries carry `png` bytes. "latents": entries carry `latent.npy` (and optionally
# `mean.npy` + `logvar.npy`), already multiplied by the latent scale stored in `meta`.
MANIFEST_KINDS = ("images", "latents")


@dataclass(frozen=True)
class ShardInfo:
    """One tar shard. `name` is relative to the manifest's folder."""

    name: str
    num_samples: int
    sha256: str
    num_bytes: int


@dataclass(frozen=True)
class SkippedFile:
    """An input that was not packed, and why (e.g. "empty file", "not an image: ...")."""

    path: str
    reason: str


@dataclass(frozen=True)
class Manifest:
    """Everything `manifest.json` records about one shard folder.

    `image_size` is the side of the square images stored, or None when the stored images keep their
    own (possibly different) sizes. `channels` is 1 (grayscale PNG) or 3 (RGB PNG); for latent shards
    it is the latent channel count. `classes[i]` names label i; an empty tuple means unlabelled.
    `meta` holds writer-specific values (e.g. the latent scale and autoencoder checkpoint for
    latent shards) that readers may look up by name.
    """

    source: str
    split: str
    kind: str
    num_samples: int
    image_size: int | None
    channels: int
    classes: tuple[str, ...]
    shards: tuple[ShardInfo, ...]
    skipped: tuple[SkippedFile, ...] = ()
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in MANIFEST_KINDS:
            raise ValueError(f"manifest kind must be one of {MANIFEST_KINDS}, got {self.kind!r}")
        counted = sum(s.num_samples for s in self.shards)
        if counted != self.num_samples:
            raise ValueError(
                f"manifest num_samples={self.num_samples} but its shards hold {counted} samples"
            )

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # Lists of dicts read better in JSON than nested tuples; the reason counts help triage.
        d["classes"] = list(self.classes)
        d["shards"] = [asdict(s) for s in self.shards]
        d["skipped"] = {
            "count": len(self.skipped),
            "by_reason": _count_reasons(self.skipped),
            "files": [asdict(s) for s in self.skipped],
        }
        return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **d}

    @classmethod
    def from_json_dict(cls, d: dict[str, Any], origin: str = "<dict>") -> Manifest:
        if d.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{origin}: not an ldm-system shard manifest (format={d.get('format')!r})")
        if d.get("version") != MANIFEST_VERSION:
            raise ValueError(
                f"{origin}: manifest version {d.get('version')!r} is not supported "
                f"(this reader understands version {MANIFEST_VERSION})"
            )
        try:
            return cls(
                source=d["source"],
                split=d["split"],
                kind=d["kind"],
                num_samples=int(d["num_samples"]),
                image_size=None if d["image_size"] is None else int(d["image_size"]),
                channels=int(d["channels"]),
                classes=tuple(d["classes"]),
                shards=tuple(ShardInfo(**s) for s in d["shards"]),
                skipped=tuple(SkippedFile(**s) for s in d["skipped"]["files"]),
                seed=int(d.get("seed", 0)),
                meta=dict(d.get("meta", {})),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{origin}: malformed manifest ({exc!r})") from exc


def _count_reasons(skipped: tuple[SkippedFile, ...]) -> dict[str, int]:
    """Group reasons by their text before the first colon ("not an image: <PIL message>")."""
    counts: dict[str, int] = {}
    for s in skipped:
        head = s.reason.split(":", 1)[0]
        counts[head] = counts.get(head, 0) + 1
    return dict(sorted(counts.items()))


def write_manifest(manifest: Manifest, folder: Path) -> Path:
    """Write `folder/manifest.json` atomically (a reader never sees a half-written file)."""
    path = Path(folder) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_json_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_manifest(path: str | Path) -> Manifest:
    """Read a manifest from its file, or from the folder that holds `manifest.json`."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no shard manifest at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: manifest is not valid JSON ({exc})") from exc
    return Manifest.from_json_dict(data, origin=str(path))

"""A generic WebDataset shard writer that records per-shard counts and sha256 checksums.

Used by `pack` (image shards) and by latent encoding (latent shards). A sample is a key plus a
mapping from extension to bytes, e.g. `{"png": b"...", "cls": b"3", "txt": b"a caption"}`; it is
stored as the tar members `<key>.png`, `<key>.cls`, `<key>.txt`, in that order, which is the
WebDataset layout. Tars are written deterministically (fixed mtime, owner and mode), so the same
input and seed give byte-identical shards and checksums.
"""
from __future__ import annotations

import hashlib
import io
import re
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from ldm_system.data.manifest import (
    MANIFEST_NAME,
    Manifest,
    ShardInfo,
    SkippedFile,
    read_manifest,
    write_manifest,
)

SHARD_PATTERN = "shard-{index:06d}.tar"
SHARD_GLOB = "shard-*.tar"
# WebDataset splits "<key>.<ext>" at the first dot of the file's base name, so keys must not
# contain dots; slashes would create folders inside the tar. Keep keys to a safe alphabet.
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
# USTAR names are at most 100 bytes; leave room for the extension.
MAX_KEY_LEN = 80
_FIXED_MTIME = 0


class _HashingFile:
    """Write-only file wrapper that hashes and counts everything passed through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.num_bytes = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.num_bytes += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def check_key(key: str) -> None:
    if not key or len(key) > MAX_KEY_LEN or not _KEY_RE.match(key):
        raise ValueError(
            f"invalid sample key {key!r}: use 1-{MAX_KEY_LEN} characters from [A-Za-z0-9_-] "
            "(WebDataset splits names at dots)"
        )


class ShardWriter:
    """Writes samples into `out_dir/shard-000000.tar`, `shard-000001.tar`, ... of `shard_size` each.

    Usage:
        with ShardWriter(out_dir, shard_size=1000) as w:
            w.write("key0", {"png": png_bytes, "cls": b"3"})
        manifest = w.write_manifest(source=..., split=..., ...)
    """

    def __init__(self, out_dir: Path, shard_size: int, overwrite: bool = False) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.shard_size = shard_size
        _prepare_out_dir(self.out_dir, overwrite)
        self.shards: list[ShardInfo] = []
        self._keys_seen: set[str] = set()
        self._file: BinaryIO | None = None
        self._hasher: _HashingFile | None = None
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._closed = False

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards) + self._count

    def write(self, key: str, entries: Mapping[str, bytes]) -> None:
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        check_key(key)
        if key in self._keys_seen:
            raise ValueError(f"duplicate sample key {key!r}")
        if not entries:
            raise ValueError(f"sample {key!r} has no entries")
        self._keys_seen.add(key)
        if self._tar is None:
            self._open_next()
        assert self._tar is not None
        for ext, payload in entries.items():
            if not isinstance(payload, (bytes, bytearray)):
                raise TypeError(f"sample {key!r} entry {ext!r} must be bytes, got {type(payload)}")
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(payload)
            info.mtime = _FIXED_MTIME
            info.mode = 0o444
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(payload))
        self._count += 1
        if self._count >= self.shard_size:
            self._close_current()

    def close(self) -> list[ShardInfo]:
        if not self._closed:
            self._close_current()
            self._closed = True
        return list(self.shards)

    def write_manifest(
        self,
        *,
        source: str,
        split: str,
        kind: str,
        image_size: int | None,
        channels: int,
        classes: tuple[str, ...] = (),
        skipped: tuple[SkippedFile, ...] = (),
        seed: int = 0,
        meta: dict[str, Any] | None = None,
    ) -> Manifest:
        """Close the writer and write `manifest.json` describing the shards written."""
        self.close()
        manifest = Manifest(
            source=source,
            split=split,
            kind=kind,
            num_samples=self.num_samples,
            image_size=image_size,
            channels=channels,
            classes=tuple(classes),
            shards=tuple(self.shards),
            skipped=tuple(skipped),
            seed=seed,
            meta=dict(meta or {}),
        )
        write_manifest(manifest, self.out_dir)
        return manifest

    def _open_next(self) -> None:
        name = SHARD_PATTERN.format(index=len(self.shards))
        self._file = open(self.out_dir / name, "wb")  # noqa: SIM115 - closed in _close_current
        self._hasher = _HashingFile(self._file)
        # Stream mode ("w|") writes strictly sequentially through the hashing wrapper.
        self._tar = tarfile.open(fileobj=self._hasher, mode="w|", format=tarfile.USTAR_FORMAT)
        self._name = name

    def _close_current(self) -> None:
        if self._tar is None:
            return
        assert self._hasher is not None and self._file is not None
        self._tar.close()  # writes the end-of-archive blocks through the hasher
        self._file.close()
        self.shards.append(
            ShardInfo(
                name=self._name,
                num_samples=self._count,
                sha256=self._hasher.sha256.hexdigest(),
                num_bytes=self._hasher.num_bytes,
            )
        )
        self._tar = self._hasher = self._file = None
        self._count = 0


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Create `out_dir`; refuse to mix new shards with an earlier pack unless `overwrite`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    old = sorted(out_dir.glob(SHARD_GLOB))
    manifest = out_dir / MANIFEST_NAME
    if not old and not manifest.exists():
        return
    if not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds shards or a manifest ({len(old)} shard files); "
            "choose an empty folder or pass overwrite=True (--overwrite) to replace them"
        )
    # Only files this writer creates are removed; anything else in the folder is left alone.
    for path in old:
        path.unlink()
    manifest.unlink(missing_ok=True)


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def verify_shards(folder: Path) -> list[str]:
    """Re-hash every shard listed in `folder/manifest.json`; return a list of problems (empty = ok)."""
    manifest = read_manifest(folder)
    problems = []
    for shard in manifest.shards:
        path = Path(folder) / shard.name
        if not path.is_file():
            problems.append(f"{shard.name}: missing")
        elif (digest := file_sha256(path)) != shard.sha256:
            problems.append(f"{shard.name}: sha256 {digest} != manifest {shard.sha256}")
    return problems

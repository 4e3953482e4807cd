"""A generic WebDataset shard writer that records per-shard counts and sha256 checksums.

Used by `pack` (image shards) and by latent encoding (latent shards). A sample is a key plus a
mapping from extension to bytes, e.g. `{"png": b"...", "cls": b"3", "txt": b"a caption"}`; it is
stored as the tar members `<key>.png`, `<key>.cls`, `<key>.txt`, in that order, which is the
WebDataset layout. Tars are plain POSIX ustar, written deterministically (fixed mtime, owner and
mode), so the same input and seed give byte-identical shards and checksums.
"""
from __future__ import annotations

import hashlib
import re
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
        if self._hasher is None:
            self._open_next()
        assert self._hasher is not None
        for ext, payload in entries.items():
            if not isinstance(payload, (bytes, bytearray)):
                raise TypeError(f"sample {key!r} entry {ext!r} must be bytes, got {type(payload)}")
            self._hasher.write(ustar_header(f"{key}.{ext}", len(payload)))
            self._hasher.write(payload)
            self._hasher.write(_ZERO_BLOCK[: -len(payload) % TAR_BLOCK])
        self._count += 1
        if self._count >= self.shard_size:
            self._close_current()

    def end_shard(self) -> None:
        """Finish the current shard now; the next sample starts a new one (shards may be smaller
        than shard_size this way, e.g. one shard per source file)."""
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
        self._name = SHARD_PATTERN.format(index=len(self.shards))
        self._file = open(self.out_dir / self._name, "wb")  # noqa: SIM115 - closed in _close_current
        self._hasher = _HashingFile(self._file)

    def _close_current(self) -> None:
        if self._hasher is None:
            return
        assert self._file is not None
        self._hasher.write(_END_OF_ARCHIVE)
        self._file.close()
        self.shards.append(
            ShardInfo(
                name=self._name,
                num_samples=self._count,
                sha256=self._hasher.sha256.hexdigest(),
                num_bytes=self._hasher.num_bytes,
            )
        )
        self._hasher = self._file = None
        self._count = 0


def check_out_dir(out_dir: Path, overwrite: bool) -> list[Path]:
    """The earlier shards in `out_dir` that a new pack replaces (changes nothing). Without
    `overwrite`, a folder holding shards or a manifest is refused. Writers call it before any
    slow work, so the mistake shows at once."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} is a file, not a folder; choose a folder to write the shards into")
    old = sorted(out_dir.glob(SHARD_GLOB)) if out_dir.is_dir() else []
    if (old or (out_dir / MANIFEST_NAME).exists()) and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds shards or a manifest ({len(old)} shard files); "
            "choose an empty folder or pass --overwrite (overwrite=True) to replace them"
        )
    return old


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Create `out_dir`; refuse to mix new shards with an earlier pack unless `overwrite`."""
    old = check_out_dir(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / MANIFEST_NAME
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


# --- tar (POSIX ustar) writing ---------------------------------------------------------------------
# Python's tarfile spends most of a pack building headers (TarInfo copies, generic field encoding).
# Every member here is a plain file with the same mode/owner/mtime, so the 512-byte header is a
# fixed template in which only the name, the size and the checksum change.
TAR_BLOCK = 512
_ZERO_BLOCK = bytes(TAR_BLOCK)
_END_OF_ARCHIVE = bytes(2 * TAR_BLOCK)  # two zero blocks end a tar archive
_NAME_LEN, _SIZE_OFF, _SIZE_LEN, _CHKSUM_OFF, _CHKSUM_LEN = 100, 124, 12, 148, 8
_MAX_MEMBER_BYTES = 8**11 - 1  # the size field holds 11 octal digits


def _header_template() -> bytearray:
    h = bytearray(TAR_BLOCK)
    h[100:108] = b"0000444\0"  # mode r--r--r--
    h[108:116] = b"0000000\0"  # uid
    h[116:124] = b"0000000\0"  # gid
    h[136:148] = b"%011o\0" % _FIXED_MTIME
    h[156:157] = b"0"  # typeflag: regular file
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    return h


_HEADER = _header_template()
# The checksum counts the checksum field itself as eight spaces.
_TEMPLATE_SUM = sum(_HEADER) + ord(" ") * _CHKSUM_LEN


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header of a regular file `name` with `size` bytes."""
    raw_name = name.encode("utf-8")
    if len(raw_name) > _NAME_LEN:
        raise ValueError(f"tar member name longer than {_NAME_LEN} bytes: {name!r}")
    if size > _MAX_MEMBER_BYTES:
        raise ValueError(f"tar member {name!r} too large ({size} bytes)")
    raw_size = b"%011o\0" % size
    h = bytearray(_HEADER)
    h[: len(raw_name)] = raw_name
    h[_SIZE_OFF : _SIZE_OFF + _SIZE_LEN] = raw_size
    chksum = _TEMPLATE_SUM + sum(raw_name) + sum(raw_size)
    h[_CHKSUM_OFF : _CHKSUM_OFF + _CHKSUM_LEN] = b"%06o\0 " % chksum
    return bytes(h)

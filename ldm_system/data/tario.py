"""Reading WebDataset tar shards sample by sample, surviving damage.

A small reader of its own instead of `tarfile`: in stream mode `tarfile` treats an archive cut at a
member boundary as a clean end, so a truncated shard would go unnoticed and its last, incomplete
sample would be delivered. Here every short read, bad header checksum or missing end-of-archive
marker counts as a damaged shard: the samples read before the damage are kept, the sample being
assembled when it happened is dropped, a warning is logged and `stats.damaged_shards` grows.

Supported: POSIX ustar and GNU tar as written by `tar`, Python's `tarfile` and webdataset, including
long names (pax `path` records and GNU `L` entries); gzip-compressed shards (`.tar.gz`, `.tgz`).
Members are grouped into samples WebDataset-style: `dir/key.ext.more` -> key `dir/key`, entry
`ext.more`; consecutive members with the same key form one sample.
"""
from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from ldm_system.data.stats import StreamStats

logger = logging.getLogger(__name__)

BLOCK = 512
_NAME = slice(0, 100)
_SIZE = slice(124, 136)
_CHKSUM = slice(148, 156)
_TYPEFLAG = 156
_MAGIC = slice(257, 263)
_PREFIX = slice(345, 500)
_REGULAR = (b"0", b"\0", b"7")  # 7 = contiguous file, read like a regular one
_PAX = (b"x",)
_GNU_LONGNAME = b"L"
_REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://")


class TarDamage(Exception):
    """The archive ends early or holds an invalid header."""


@dataclass
class RawSample:
    """One sample's undecoded entries, e.g. {"png": b"...", "cls": b"3", "txt": b""}."""

    key: str
    entries: dict[str, bytes] = field(default_factory=dict)
    url: str = ""


def open_shard(url: str) -> BinaryIO:
    """Open a local path, or any URL webdataset's `gopen` understands (pipe:, http://, ...)."""
    if url.startswith(_REMOTE_PREFIXES):
        from webdataset.gopen import gopen  # only remote shards need it

        stream = gopen(url, "rb")
    else:
        stream = open(url, "rb")  # noqa: SIM115 - the caller closes it
    if url.endswith((".gz", ".tgz")):
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    return stream


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TarDamage(f"unexpected end of archive ({len(data)} of {n} bytes)")
    return data


def _octal(field_bytes: bytes) -> int:
    text = field_bytes.split(b"\0", 1)[0].strip()
    if field_bytes[:1] == b"\x80":  # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field_bytes[1:], "big")
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise TarDamage(f"bad number field {field_bytes!r}") from None


def _checksum_ok(header: bytes) -> bool:
    stored = _octal(header[_CHKSUM])
    unsigned = sum(header[:148]) + 8 * ord(" ") + sum(header[156:])
    if stored == unsigned:
        return True
    # Some old writers summed signed bytes.
    signed = sum(b - 256 if b > 127 else b for b in header[:148] + header[156:]) + 8 * ord(" ")
    return stored == signed


def _pax_path(payload: bytes) -> str | None:
    """The `path` record of a pax extended header ("<len> path=<name>\\n" records)."""
    for record in payload.split(b"\n"):
        _, _, kv = record.partition(b" ")
        if kv.startswith(b"path="):
            return kv[len(b"path=") :].decode("utf-8", "replace")
    return None


def iter_members(f: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file, in archive order. Raises TarDamage on damage."""
    long_name: str | None = None
    while True:
        header = f.read(BLOCK)
        if len(header) == 0:
            raise TarDamage("archive ends without its end-of-archive marker")
        if len(header) != BLOCK:
            raise TarDamage(f"truncated header ({len(header)} bytes)")
        if header == bytes(BLOCK):
            return  # end-of-archive (a second zero block may follow; nothing after it matters)
        if not _checksum_ok(header):
            raise TarDamage("header checksum mismatch")
        size = _octal(header[_SIZE])
        padded = size + (-size % BLOCK)
        kind = header[_TYPEFLAG : _TYPEFLAG + 1]
        if kind in _PAX or kind == _GNU_LONGNAME:
            payload = _read_exact(f, padded)[:size]
            name = _pax_path(payload) if kind in _PAX else payload.rstrip(b"\0").decode("utf-8", "replace")
            long_name = name or long_name
            continue
        if kind not in _REGULAR:
            _read_exact(f, padded)  # directories, links, pax globals: nothing to deliver
            long_name = None
            continue
        name = long_name or _ustar_name(header)
        long_name = None
        data = _read_exact(f, padded)[:size]
        yield name, data


def _ustar_name(header: bytes) -> str:
    name = header[_NAME].split(b"\0", 1)[0].decode("utf-8", "replace")
    if header[_MAGIC].startswith(b"ustar"):
        prefix = header[_PREFIX].split(b"\0", 1)[0].decode("utf-8", "replace")
        if prefix:
            name = f"{prefix}/{name}"
    return name


def split_name(name: str) -> tuple[str, str] | None:
    """WebDataset naming: "a/b.c.d" -> ("a/b", "c.d"); None for names without an extension."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot <= slash + 1:
        return None
    return name[:dot], name[dot + 1 :].lower()


def read_samples(url: str, stats: StreamStats) -> Iterator[RawSample]:
    """Samples of one shard. Damage ends the shard with a warning instead of raising."""
    try:
        f = open_shard(url)
    except OSError as exc:
        stats.record("unreadable_shards", f"cannot open shard {url}: {exc}")
        return
    current: RawSample | None = None
    with f:
        try:
            for name, data in iter_members(f):
                parts = split_name(name)
                if parts is None or parts[0].rsplit("/", 1)[-1].startswith("__"):
                    continue  # no extension, or webdataset metadata such as __index__
                key, ext = parts
                if current is not None and current.key != key:
                    yield current
                    current = None
                if current is None:
                    current = RawSample(key, {}, url)
                current.entries[ext] = data
        except (TarDamage, OSError, EOFError, zlib.error) as exc:
            # The sample being assembled may be missing entries: drop it, keep what came before.
            stats.record("damaged_shards", f"damaged shard {url}: {exc}; rest of the shard skipped")
            return
    if current is not None:
        yield current

"""Reading WebDataset tar shards sample by sample, surviving damage.

A small reader of its own instead of `tarfile`: in stream mode `tarfile` treats an archive cut at a
member boundary as a clean end, so a truncated shard would go unnoticed and its last, incomplete
sample would be delivered. Here every short read, bad header checksum or missing end-of-archive
marker counts as a damaged shard: the samples read before the damage are kept, the sample being
assembled when it happened is dropped, the problem is reported (the loader logs a warning and counts it in `stats.damaged_shards`).

Supported: POSIX ustar and GNU tar as written by `tar`, Python's `tarfile` and webdataset, including
long names (pax `path` records and GNU `L` entries); gzip-compressed shards (`.tar.gz`, `.tgz`).
Members are grouped into samples WebDataset-style: `dir/key.ext.more` -> key `dir/key`, entry
`ext.more`; consecutive members with the same key form one sample.
"""
from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

logger = logging.getLogger(__name__)

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
MAX_MEMBER_BYTES = 1 << 32  # one image or latent file; anything larger is a corrupt header
_NAME = slice(0, 100)
_SIZE = slice(124, 136)
_CHKSUM = slice(148, 156)
_TYPEFLAG = 156
_MAGIC = slice(257, 263)
_PREFIX = slice(345, 500)
_REGULAR = (b"0", b"\0", b"7")  # 7 = contiguous file, read like a regular one
_PAX = (b"x",)
_GNU_LONGNAME = b"L"
# Streams that webdataset's `gopen` opens. `gopen` runs a `pipe:` URL through a shell, so these
# prefixes only ever come from a spec the user typed (see shardlist.py); a name found by listing a
# folder or reading a manifest is data and is opened as a local file whatever it starts with.
REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://")
PIPE_PREFIX = "pipe:"


class TarDamage(Exception):
    """The archive ends early or holds an invalid header. `member` names the file whose data was
    cut, when its header could still be read."""

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.member = member


@dataclass
class RawSample:
    """One sample's undecoded entries, e.g. {"png": b"...", "cls": b"3", "txt": b""}."""

    key: str
    entries: dict[str, bytes] = field(default_factory=dict)
    url: str = ""


def open_shard(url: str, remote: bool = False) -> BinaryIO:
    """Open a shard. `remote=False` (the default) always opens `url` as a local file, even when the
    name looks like `pipe:...` or `http://...`; only `remote=True`, which shardlist.py sets for a URL
    the user typed, hands it to webdataset's `gopen` (http(s), s3, gs, and pipe: when allowed)."""
    if remote:
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
    if field_bytes[:1] == b"\x80":  # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field_bytes[1:], "big")
    try:
        return int(field_bytes.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise TarDamage(f"bad number field {field_bytes!r}") from None


def _checksum_ok(header: bytes) -> bool:
    stored = _octal(header[_CHKSUM])
    unsigned = sum(header) - sum(header[_CHKSUM]) + 8 * ord(" ")  # the field counts as spaces
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
        if header == _ZERO_BLOCK:
            return  # end-of-archive (a second zero block may follow; nothing after it matters)
        if not _checksum_ok(header):
            raise TarDamage("header checksum mismatch")
        size = _octal(header[_SIZE])
        if size > MAX_MEMBER_BYTES:  # a corrupt size would make us read (and allocate) the rest
            raise TarDamage(f"member of {size} bytes exceeds the {MAX_MEMBER_BYTES}-byte limit")
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
        try:
            data = _read_exact(f, padded)[:size]
        except TarDamage as exc:
            raise TarDamage(str(exc), member=name) from None
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


# report(counter, message): how a problem is counted and logged, e.g. StreamStats.record.
Report = Callable[[str, str], None]


def read_samples(url: str, report: Report, remote: bool = False) -> Iterator[RawSample]:
    """Samples of one shard (`remote` as in `open_shard`). Damage ends the shard and is reported
    instead of raised."""
    try:
        f = open_shard(url, remote)
    except OSError as exc:
        report("unreadable_shards", f"cannot open shard {url}: {exc}")
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
            report("damaged_shards", f"damaged shard {url}: {exc}; rest of the shard skipped")
            # The sample being assembled is kept only when the cut is known to be in another
            # sample's member; otherwise it may be missing entries and is dropped.
            cut = split_name(exc.member) if isinstance(exc, TarDamage) and exc.member else None
            if current is not None and cut is not None and cut[0] != current.key:
                yield current
            return
    if current is not None:
        yield current

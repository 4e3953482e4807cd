"""Turn a shard spec into the list of shards to stream, with sample counts when known.

A spec is one of:
  * a folder holding `manifest.json` (or the manifest file itself): the manifest's shard list;
  * a folder without a manifest: its `*.tar` files, sorted by name;
  * a path or URL, possibly with braces and several specs joined by "::", e.g.
    `out/shard-{000000..000003}.tar` or `a/shard-000000.tar::b/shard-000000.tar`.
    When a listed local shard sits next to a manifest that names it, its count is taken from there.
Local shards must exist: a typo fails here, with the missing paths, not later inside a worker.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from webdataset.shardlists import expand_urls

from ldm_system.data.manifest import MANIFEST_NAME, Manifest, read_manifest
from ldm_system.data.tario import REMOTE_PREFIXES

_SHOW_MISSING = 5


@dataclass(frozen=True)
class ShardRef:
    url: str
    num_samples: int | None = None  # None when no manifest says


@dataclass(frozen=True)
class ShardList:
    shards: tuple[ShardRef, ...]
    manifest: Manifest | None = None  # set when the spec named a manifest or its folder

    @property
    def num_samples(self) -> int | None:
        counts = [s.num_samples for s in self.shards]
        return None if any(c is None for c in counts) else sum(counts)  # type: ignore[misc]


def _from_manifest(folder: Path) -> ShardList:
    manifest = read_manifest(folder)
    refs = tuple(ShardRef(str(folder / s.name), s.num_samples) for s in manifest.shards)
    missing = [r.url for r in refs if not Path(r.url).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder / MANIFEST_NAME} lists {len(missing)} missing shards: {missing[:_SHOW_MISSING]}"
        )
    return ShardList(refs, manifest)


def _sibling_counts(paths: list[Path]) -> dict[Path, int]:
    """Counts from manifests next to the given shard files, keyed by resolved shard path."""
    counts: dict[Path, int] = {}
    for folder in {p.parent for p in paths}:
        if (folder / MANIFEST_NAME).is_file():
            for s in read_manifest(folder).shards:
                counts[(folder / s.name).resolve()] = s.num_samples
    return counts


def resolve_shards(spec: str | Path) -> ShardList:
    spec = str(spec)
    if not spec.strip():
        raise ValueError("empty shard spec: give a folder with manifest.json or a shard pattern")
    path = Path(spec)
    if path.is_dir():
        if (path / MANIFEST_NAME).is_file():
            return _from_manifest(path)
        tars = sorted(path.glob("*.tar"))
        if not tars:
            raise FileNotFoundError(f"{spec}: folder has neither {MANIFEST_NAME} nor *.tar shards")
        return ShardList(tuple(ShardRef(str(t)) for t in tars))
    if path.name == MANIFEST_NAME and path.is_file():
        return _from_manifest(path.parent)
    urls = expand_urls(spec)
    local = [Path(u) for u in urls if not u.startswith(REMOTE_PREFIXES)]
    missing = [str(p) for p in local if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(urls)} shards in {spec!r} do not exist, "
            f"e.g. {missing[:_SHOW_MISSING]}"
        )
    counts = _sibling_counts(local)
    refs = tuple(
        ShardRef(u, None if u.startswith(REMOTE_PREFIXES) else counts.get(Path(u).resolve()))
        for u in urls
    )
    return ShardList(refs)

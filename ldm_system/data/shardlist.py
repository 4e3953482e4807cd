"""Turn a shard spec into the list of shards to stream, with sample counts when known.

A spec is one of:
  * a folder holding `manifest.json` (or the manifest file itself): the manifest's shard list;
  * a folder without a manifest: its `*.tar` files, sorted by name;
  * a path or URL, possibly with braces and several specs joined by "::", e.g.
    `out/shard-{000000..000003}.tar` or `a/shard-000000.tar::b/shard-000000.tar`.
    When a listed local shard sits next to a manifest that names it, its count is taken from there.
Local shards must exist: a typo fails here, with the missing paths, not later inside a worker.

Names are data, never commands. A shard found by listing a folder or named in a manifest is always
a local file, given as its resolved absolute path, whatever characters its name holds: a downloaded
dataset with a file called `pipe:rm -rf ~;.tar` is read as a (broken) tar file, not run. Manifest
names must stay inside the manifest's folder. Remote streams (`http(s)://`, `s3://`, `gs://`) come
only from a spec the user typed; `pipe:<shell command>` only when the user also sets
`allow_pipe=True` (`data.allow_pipe: true`), since webdataset runs it through a shell.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from webdataset.shardlists import expand_urls

from ldm_system.data.manifest import MANIFEST_NAME, Manifest, read_manifest
from ldm_system.data.tario import PIPE_PREFIX, REMOTE_PREFIXES

_SHOW_MISSING = 5


@dataclass(frozen=True)
class ShardRef:
    url: str  # a resolved local path, or (remote=True) a URL the user typed
    num_samples: int | None = None  # None when no manifest says
    remote: bool = False  # True only for user-typed http(s)/s3/gs/pipe: URLs, opened with gopen


@dataclass(frozen=True)
class ShardList:
    shards: tuple[ShardRef, ...]
    manifest: Manifest | None = None  # set when the spec named a manifest or its folder

    @property
    def num_samples(self) -> int | None:
        counts = [s.num_samples for s in self.shards]
        return None if any(c is None for c in counts) else sum(counts)  # type: ignore[misc]


def _inside(folder: Path, name: str) -> Path:
    """`folder/name` resolved, refusing a manifest name that points outside its folder."""
    base = folder.resolve()
    path = (base / name).resolve()
    if not path.is_relative_to(base):
        raise ValueError(f"{folder / MANIFEST_NAME}: shard name {name!r} points outside {base}")
    return path


def _from_manifest(folder: Path) -> ShardList:
    manifest = read_manifest(folder)
    refs = tuple(ShardRef(str(_inside(folder, s.name)), s.num_samples) for s in manifest.shards)
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


def _local_ref(path: Path, counts: dict[Path, int]) -> ShardRef:
    resolved = path.resolve()
    return ShardRef(str(resolved), counts.get(resolved))


def _user_url(url: str, allow_pipe: bool) -> bool:
    """Whether a URL from the user's own spec is remote; a refused `pipe:` raises."""
    if url.startswith(PIPE_PREFIX):
        if not allow_pipe:
            raise ValueError(
                f"shard spec {url!r} is a shell command (webdataset's pipe:); set data.allow_pipe: true "
                f"to run it, or write ./{url} for a local file of that name"
            )
        return True
    return url.startswith(REMOTE_PREFIXES)


def resolve_shards(spec: str | Path, allow_pipe: bool = False) -> ShardList:
    spec = str(spec)
    if not spec.strip():
        raise ValueError("empty shard spec: give a folder with manifest.json or a shard pattern")
    path = Path(spec)
    if path.is_dir():
        if (path / MANIFEST_NAME).is_file():
            return _from_manifest(path)
        # Regular files only: a FIFO or device named *.tar would block or stream forever.
        tars = sorted(t for t in path.glob("*.tar") if t.is_file())
        if not tars:
            raise FileNotFoundError(f"{spec}: folder has neither {MANIFEST_NAME} nor *.tar shards")
        # Listed names are data: resolved paths, so none can start with pipe: or http:.
        return ShardList(tuple(ShardRef(str(t.resolve())) for t in tars))
    if path.name == MANIFEST_NAME and path.is_file():
        return _from_manifest(path.parent)
    urls = expand_urls(spec)
    remote = {u: _user_url(u, allow_pipe) for u in urls}
    local = [Path(u) for u in urls if not remote[u]]
    missing = [str(p) for p in local if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(urls)} shards in {spec!r} do not exist, "
            f"e.g. {missing[:_SHOW_MISSING]}"
        )
    counts = _sibling_counts(local)
    refs = tuple(
        ShardRef(u, remote=True) if remote[u] else _local_ref(Path(u), counts) for u in urls
    )
    return ShardList(refs)

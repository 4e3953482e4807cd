"""Checkpoint folders: atomic writes, retention of the last K, and `latest` resolution.

Layout of a run folder:

    run/checkpoints/step_00000100/   accelerate state (model, optimizers, schedulers, RNG, ...)
                                      + trainer.json + loader_rank{r}.json + ema_rank{r}.safetensors
                                      + weights/ (consolidated safetensors) + manifest.json
    run/checkpoints/latest           text file naming the newest complete checkpoint

A checkpoint is written into `step_N.tmp/` by all ranks, then rank 0 writes `manifest.json` (every
file's size and SHA-256) last, renames the folder to `step_N/` and rewrites `latest` with
`os.replace`. A crash or a signal at any point leaves `latest` naming a complete folder: the rename
is the commit point.

Resume verifies the manifest before accelerate or DeepSpeed unpickle anything, so a damaged file
(a zero-byte RNG state, a truncated optimizer shard) is an error that names it, never a silent
restart on another trajectory. The manifest guards against damage, not against malice: whoever
can write the folder can rewrite its manifest, and the optimizer and RNG files are pickles. A
checkpoint folder from someone else is code; share exports (safetensors only) instead.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

LATEST = "latest"
MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, damaged or belongs to another run."""


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def tmp_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}.tmp"


def commit(root: Path, step: int, keep_last: int) -> Path:
    """Rank 0 only: publish `step_N.tmp` as `step_N`, point `latest` at it, prune old ones."""
    src, dst = tmp_dir(root, step), step_dir(root, step)
    if dst.exists():  # re-saving the same step after a resume: replace it
        shutil.rmtree(dst)
    os.replace(src, dst)
    pointer = root / (LATEST + ".tmp")
    pointer.write_text(dst.name + "\n")
    os.replace(pointer, root / LATEST)
    prune(root, keep_last)
    return dst


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and not p.name.endswith(".tmp")]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def prune(root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob("step_*.tmp"):  # leftovers of a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    """Rank 0, after every rank has written its files: size and SHA-256 of each, written last."""
    files = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (MANIFEST, MANIFEST + ".tmp")):
        files[f.relative_to(folder).as_posix()] = {"size": f.stat().st_size, "sha256": _sha256(f)}
    write_json(folder / MANIFEST, {"format": 1, "files": files})


def verify(folder: Path, only: Callable[[str], bool] | None = None) -> None:
    """Check every file listed in the manifest (or those `only` selects); raise naming the first bad one."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST} (an incomplete checkpoint, or one written by an older "
                              "version); pass --resume-weights-only to load just its consolidated weights")
    try:
        files = read_json(manifest)["files"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{manifest}: unreadable manifest ({e})") from None
    for rel, want in files.items():
        if only is not None and not only(rel):
            continue
        f = folder / rel
        if not f.is_file():
            raise CheckpointError(f"{f}: listed in the manifest but missing")
        size = f.stat().st_size
        if size != want["size"]:
            raise CheckpointError(f"{f}: {size} bytes, the manifest says {want['size']} (truncated or damaged)")
        if _sha256(f) != want["sha256"]:
            raise CheckpointError(f"{f}: contents differ from the manifest's SHA-256 (damaged or modified)")


def weights_files(rel: str) -> bool:
    """What a weights-only resume reads: the consolidated safetensors and trainer.json."""
    return rel.startswith("weights/") or rel == "trainer.json"


def resolve(resume: str, run_dir: Path, log: Callable[[str], None] = print,
            only: Callable[[str], bool] | None = None) -> Path | None:
    """`latest` → the newest complete, verified checkpoint of this run, logging any it skips and why
    (None when there is none); else the given folder, which must exist and verify."""
    root = run_dir / "checkpoints"
    if resume == "latest":
        for path in reversed(list_checkpoints(root)):
            try:
                verify(path, only)
            except CheckpointError as e:
                log(f"skipping checkpoint {path.name}: {e}")
                continue
            return path
        return None
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"--resume {resume}: no such checkpoint folder (use --resume latest to continue "
                              "the run in train.out_dir)")
    if not (path / "trainer.json").exists():
        raise CheckpointError(f"--resume {resume}: not a complete ldm-system checkpoint (no trainer.json)")
    verify(path, only)
    return path


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())

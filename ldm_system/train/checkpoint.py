"""Checkpoint folders: atomic writes, retention of the last K, and `latest` resolution.

Layout of a run folder:

    run/checkpoints/step_00000100/   accelerate state (model, optimizers, schedulers, RNG, ...)
                                      + trainer.json + loader_rank{r}.json + ema_rank{r}.safetensors
    run/checkpoints/latest           text file naming the newest complete checkpoint

A checkpoint is written into `step_N.tmp/` by all ranks, then rank 0 renames it to `step_N/` and
rewrites `latest` with `os.replace`. A crash at any point leaves `latest` naming a complete
folder: the rename is the commit point.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

LATEST = "latest"


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


def resolve(resume: str, run_dir: Path) -> Path | None:
    """`latest` → newest complete checkpoint of this run (None when there is none); else a path."""
    root = run_dir / "checkpoints"
    if resume == "latest":
        pointer = root / LATEST
        if pointer.exists():
            path = root / pointer.read_text().strip()
            if path.is_dir():
                return path
        found = list_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint folder")
    if not (path / "trainer.json").exists():
        raise ValueError(f"--resume {resume}: not a complete ldm-system checkpoint (no trainer.json)")
    return path


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())

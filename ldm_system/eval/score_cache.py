"""Scores that outlive one `ldm report` run: `--cache DIR`.

A comparison grows: a new family, another seed, one more budget. Without a cache every report
re-samples every model (pixel diffusion alone is minutes per model on a CPU). With one, a model
whose folder, sampling setting and evaluation settings are unchanged is read back (its row and its
samples) instead of sampled again.

The key is a hash of everything a score depends on: the model folder's files (relative path, size
and modification time of each), the sampling setting, and the evaluation settings (sample count,
seed, feature network, test images, classifier). Retraining or re-exporting a model changes its files,
so its stale score is never used. A score read back keeps the seconds per image measured when it was
made: compare timings only between scores made on the same machine.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch


def folder_fingerprint(path: str | Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every file under `path` (or of `path` itself), sorted."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, p.stat().st_mtime_ns)
            for p in files]


def score_key(model_dir: str | Path, setting: str, evaluation: dict) -> str:
    """Hex digest naming one model's score under one sampling setting and one evaluation setup."""
    blob = json.dumps({"model": str(Path(model_dir).resolve()), "files": folder_fingerprint(model_dir),
                       "setting": setting, "evaluation": evaluation}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class ScoreCache:
    """Scores stored as `DIR/KEY.pt` (a row as a dict, and the samples in half precision); a `None`
    folder turns caching off."""

    def __init__(self, folder: str | Path | None):
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.hits = 0

    def load(self, key: str) -> tuple[dict, torch.Tensor] | None:
        """The stored (row fields, samples), or None (not stored, caching off, or an unreadable file,
        which is then scored again)."""
        if self.folder is None or not (path := self.folder / f"{key}.pt").is_file():
            return None
        try:
            stored = torch.load(path, weights_only=True)
            row, samples = stored["row"], stored["samples"].float()
        except Exception as e:  # noqa: BLE001  a torn or foreign file (torch raises many types): score again
            print(f"cached score {path} unreadable ({e}); scoring again", flush=True)
            return None
        self.hits += 1
        return row, samples

    def store(self, key: str, row: dict, samples: torch.Tensor) -> None:
        if self.folder is None:
            return
        path = self.folder / f"{key}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save({"row": row, "samples": samples.half()}, tmp)
        tmp.replace(path)  # never a half-written score under the real name


__all__ = ["ScoreCache", "folder_fingerprint", "score_key"]

"""The side files `ldm invert` writes next to its images: x_T and the fitted null embeddings.

They are safetensors (a tensor under one key plus string metadata: steps, guidance, classes or
prompts), so reading one back runs no code, whoever wrote it. Files in the old `.pt` form are still
read, with `torch.load(weights_only=True)` only: tensors and strings, never arbitrary pickle.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


def save_noise(path: Path, x_T: torch.Tensor, meta: dict[str, str], key: str = "x_T") -> Path:
    """A tensor as safetensors under `key`, with string metadata; `.pt` (an older form) by suffix."""
    x_T = x_T.detach().cpu().contiguous()
    if path.suffix == ".pt":
        torch.save({key: x_T, **meta}, path)
    else:
        from safetensors.torch import save_file

        save_file({key: x_T}, str(path), metadata=meta)
    return path


def load_noise(path: str | Path, key: str = "x_T") -> tuple[torch.Tensor, dict[str, str]]:
    """Read back what `save_noise` wrote: (tensor, string metadata). A damaged file is a ValueError
    that names it."""
    path = Path(path)
    if path.suffix == ".pt":
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, or a pickle that wants more than tensors and strings
            raise ValueError(f"{path}: not a readable tensor file ({type(e).__name__}: {str(e).splitlines()[0]})") from e
        if not isinstance(saved, dict) or not isinstance(saved.get(key), torch.Tensor):
            raise ValueError(f"{path}: holds no {key!r} tensor")
        return saved.pop(key), {k: v for k, v in saved.items() if isinstance(v, str)}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            if key not in f.keys():
                raise ValueError(f"{path}: holds no {key!r} tensor")
            return f.get_tensor(key), dict(f.metadata() or {})
    except SafetensorError as e:
        raise ValueError(f"{path}: truncated or not a safetensors file ({e})") from e


def replay_inversion(pipe, folder: str | Path) -> torch.Tensor:
    """Reconstruct from an `ldm invert --out FOLDER` result: x_T, and for --null-opt the fitted null
    embeddings, under the recorded classes/prompts, steps and guidance → images (B, C, H, W) in [-1, 1]."""
    folder = Path(folder)
    found = [p for p in (folder / "x_T.safetensors", folder / "x_T.pt") if p.exists()]
    if not found:
        raise FileNotFoundError(f"{folder}: no x_T.safetensors or x_T.pt (not an `ldm invert` output folder)")
    x_T, meta = load_noise(found[0])
    nulls = None
    null_file = found[0].with_name(f"null_embeddings{found[0].suffix}")
    if meta.get("null_optimization") == "True":
        if not null_file.exists():
            raise FileNotFoundError(f"{folder}: the inversion used --null-opt but {null_file.name} is missing")
        nulls = load_noise(null_file, "null_embeddings")[0]
    classes, prompts = json.loads(meta.get("classes", "null")), json.loads(meta.get("prompts", "null"))
    return pipe.reconstruct(x_T, classes=classes, prompts=prompts, steps=int(meta["steps"]),
                            guidance=float(meta["guidance"]), null_embeddings=nulls)


__all__ = ["load_noise", "replay_inversion", "save_noise"]

"""The one place a `--device` value becomes a torch device name (`ldm sample | invert | edit |
interpolate | serve`, and `serve()`): "auto" (the default) is CUDA when a CUDA device is present,
else the CPU."""
from __future__ import annotations

import torch


def resolve_device(name: str) -> str:
    """'auto' → 'cuda' or 'cpu'; any other name is checked (a CUDA name needs a CUDA device)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r}: not a device name (auto, cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available on this machine; use --device auto or cpu")
    return name


__all__ = ["resolve_device"]

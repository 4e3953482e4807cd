"""`ldm train --init-from SRC`: start stage 2 from pretrained UNet weights.

SRC is one of
- a training checkpoint of ours (`run/checkpoints/step_N/`: `weights/unet[.ema].safetensors`),
- an exported model folder (`ldm export` output: `unet/` in diffusers format),
- a bare diffusers UNet folder (`config.json` + `diffusion_pytorch_model.safetensors`).

EMA weights are preferred when present. The EMA of the new run restarts from the loaded weights.

A different number of classes is handled by resizing the class table: rows 0..min(K_old, K_new)-1
are copied, the null-class row (the last one, used for guidance) is copied to the new last row,
and any new classes keep their fresh initialisation. Every other shape mismatch is an error that
lists the mismatching tensors.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ldm_system.models.unet import UNetConfig, build_unet

CLASS_TABLE = "class_embedding.weight"


class IncompatibleCheckpointError(ValueError):
    pass


def _read_source(src: Path) -> dict[str, torch.Tensor]:
    if (src / "weights").is_dir():  # our training checkpoint
        for name in ("unet.ema.safetensors", "unet.safetensors"):
            if (src / "weights" / name).exists():
                sd = load_file(str(src / "weights" / name))
                return {k.removeprefix("unet."): v for k, v in sd.items()}
    folder = src / "unet" if (src / "unet").is_dir() else src
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (folder / name).exists():
            return load_file(str(folder / name))
    raise FileNotFoundError(
        f"--init-from {src}: no UNet weights found (expected weights/unet*.safetensors, unet/ or a diffusers UNet folder)"
    )


def _resize_class_table(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    out = new.clone()
    k_old, k_new = old.shape[0] - 1, new.shape[0] - 1  # last row = null class
    n = min(k_old, k_new)
    out[:n] = old[:n]
    out[k_new] = old[k_old]
    return out


def merge_state(model: nn.Module, state: dict[str, torch.Tensor], src: str = "checkpoint") -> dict[str, torch.Tensor]:
    """State for `model` from `state`, resizing the class table; raises on any other mismatch."""
    own = model.state_dict()
    problems = []
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    merged = {}
    for k, v in own.items():
        if k not in state:
            continue
        if state[k].shape == v.shape:
            merged[k] = state[k]
        elif k == CLASS_TABLE and state[k].shape[1:] == v.shape[1:]:
            merged[k] = _resize_class_table(state[k], v)
        else:
            problems.append(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}")
    problems += [f"missing in checkpoint: {k}" for k in missing[:20]]
    problems += [f"not in model: {k}" for k in unexpected[:20]]
    if problems:
        raise IncompatibleCheckpointError(
            f"{src} does not match the configured UNet ({len(problems)} problems):\n  " + "\n  ".join(problems)
        )
    return merged


def load_init_unet(init_from: str, cfg: UNetConfig) -> nn.Module:
    src = Path(init_from)
    if not src.exists():
        raise FileNotFoundError(f"--init-from {init_from}: no such file or folder")
    unet = build_unet(cfg)
    unet.load_state_dict(merge_state(unet, _read_source(src), str(src)), strict=True)
    return unet

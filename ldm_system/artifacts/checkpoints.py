"""Our training checkpoints (`run/checkpoints/step_N/`) as read by export and `--init-from`:

    trainer.json                  {"task", "step", "task_metadata": {latent_scale, classes, autoencoder, ...}}
    config.yaml                   the resolved run config (we read its `unet:`, `diffusion:` and `lora:` sections)
    weights/unet[.ema].safetensors  consolidated weights (gathered from ZeRO-3 shards when written)

Read without importing the training package: serving and export sit beside it, not above it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from autoencoders.weights import read_weights
from ldm_system.artifacts.kinds import CONFIG_YAML, TRAINER_JSON, WEIGHTS_DIR, resolve_checkpoint
from ldm_system.config import from_dict
from ldm_system.diffusion.config import DiffusionConfig
from ldm_system.models.lora import LoRAConfig
from ldm_system.models.unet import UNetConfig


@dataclass(frozen=True)
class Stage2Checkpoint:
    path: Path
    step: int
    unet: UNetConfig
    diffusion: DiffusionConfig
    meta: dict  # task_metadata
    lora: LoRAConfig = LoRAConfig()  # adapters the weights carry (rank 0: none)

    def unet_state(self, use_ema: bool = True, fallback: bool = False) -> dict[str, torch.Tensor]:
        """The UNet's state dict (EMA by default; with `fallback`, raw weights when there is no EMA)."""
        names = ["unet.ema.safetensors", "unet.safetensors"] if use_ema else ["unet.safetensors"]
        for name in names if fallback or not use_ema else names[:1]:
            f = self.path / WEIGHTS_DIR / name
            if f.is_file():
                return {k.removeprefix("unet."): v for k, v in read_weights(f).items()}
        f = self.path / WEIGHTS_DIR / names[0]
        raise FileNotFoundError(f"{f} not found" + (": this run kept no EMA; export with --raw" if use_ema else ""))


def read_stage2(path: str | Path) -> Stage2Checkpoint:
    ckpt = resolve_checkpoint(path)
    trainer = json.loads((ckpt / TRAINER_JSON).read_text())
    if trainer.get("task") != "DiffusionTask":
        raise ValueError(f"{ckpt} holds a {trainer.get('task')!r} checkpoint; a stage-2 (DiffusionTask) one is needed")
    raw = yaml.safe_load((ckpt / CONFIG_YAML).read_text()) or {}
    src = str(ckpt / CONFIG_YAML)
    return Stage2Checkpoint(ckpt, int(trainer["step"]), from_dict(UNetConfig, raw.get("unet", {}), source=src, where="unet"),
                            from_dict(DiffusionConfig, raw.get("diffusion", {}), source=src, where="diffusion"),
                            dict(trainer.get("task_metadata", {})),
                            from_dict(LoRAConfig, raw.get("lora", {}), source=src, where="lora"))


__all__ = ["Stage2Checkpoint", "read_stage2"]

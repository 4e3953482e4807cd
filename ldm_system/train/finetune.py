"""`ldm train --init-from SRC`: start stage 2 from pretrained weights.

SRC is any folder the artifact layer (`ldm_system/artifacts`) knows as holding a UNet:
- a training checkpoint or run of ours (`weights/unet[.ema].safetensors`; EMA preferred),
- an `ldm export` folder (`unet/`),
- a diffusers pipeline folder (`model_index.json`: `unet/`, `scheduler/`, `text_encoder/` + `tokenizer/`),
- a bare diffusers UNet folder (`config.json` + weights; safetensors, fp16 variant or tensor-only .bin).

For diffusers folders the UNet's architecture is the folder's own (artifacts/diffusers_unet.py: an exact
mapping, or a refusal with the reason): `unet:` values left at their defaults take the folder's, values set
to something else must agree with it or the error names both. A pipeline folder's scheduler fills the
forward process of `diffusion:` (same rule) and its text encoder fills an empty `text.path`.
Our own checkpoints and exports keep the YAML's UNet. The EMA of the new run restarts from the loaded weights.

A different number of classes (our own checkpoints) is handled by resizing the class table: rows
0..min(K_old, K_new)-1 are copied, the null-class row (the last one, used for guidance) is copied to the
new last row, and any new classes keep their fresh initialisation. Every other shape mismatch is an
error that lists the mismatching tensors.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ldm_system.artifacts.kinds import MODEL_CONFIG, Kind, detect
from ldm_system.diffusion.config import DiffusionConfig
from ldm_system.models.unet import UNetConfig, build_unet

CLASS_TABLE = "class_embedding.weight"
DIFFUSION_FIELDS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "zero_terminal_snr",
                    "prediction_type")


class IncompatibleCheckpointError(ValueError):
    pass


@dataclass(frozen=True)
class InitSource:
    where: str
    state: dict[str, torch.Tensor]
    unet: UNetConfig | None = None  # the architecture a diffusers folder fixes (None: the YAML's)
    diffusion: DiffusionConfig | None = None  # a pipeline folder's scheduler
    text_path: str = ""  # a pipeline folder with text_encoder/ + tokenizer/
    text_max_length: int = 0


def read_init_source(init_from: str) -> InitSource:
    from autoencoders.weights import read_weights, weight_file
    from ldm_system.artifacts.diffusers_unet import read_unet_folder

    src = Path(init_from)
    if not src.exists():
        raise FileNotFoundError(f"--init-from {init_from}: no such file or folder")
    kind = detect(src)
    if kind in (Kind.CHECKPOINT, Kind.RUN):
        from ldm_system.artifacts.checkpoints import read_stage2

        return InitSource(str(src), read_stage2(src).unet_state(use_ema=True, fallback=True))
    if kind is Kind.EXPORT:
        return InitSource(str(src), read_weights(weight_file(src / "unet")))
    if kind is Kind.DIFFUSERS_MODEL:
        cfg, state = read_unet_folder(src)
        return InitSource(str(src), state, cfg)
    if kind is Kind.DIFFUSERS_PIPELINE:
        from ldm_system.artifacts.scheduler import read_scheduler

        cfg, state = read_unet_folder(src / "unet")
        diffusion = read_scheduler(src / "scheduler")[0] if (src / "scheduler").is_dir() else None
        text, length = "", 0
        if cfg.conditioning == "text" and (src / "text_encoder").is_dir():
            tok = src / "tokenizer" / "tokenizer_config.json"
            positions = int(json.loads((src / "text_encoder" / MODEL_CONFIG).read_text()).get("max_position_embeddings", 77))
            asked = json.loads(tok.read_text()).get("model_max_length") if tok.is_file() else None
            text, length = str(src), min(int(asked or positions), positions)
        return InitSource(str(src), state, cfg, diffusion, text, length)
    raise FileNotFoundError(f"--init-from {init_from}: a {kind.value} holds no UNet")


def apply_init(cfg, src: InitSource):
    """The run config with what the source fixes (UNet architecture, forward process, text encoder)."""
    from ldm_system.artifacts.diffusers_unet import check_against_yaml

    changes = {}
    if src.unet is not None:
        changes["unet"] = check_against_yaml(src.unet, cfg.unet, src.where)
    if src.diffusion is not None and cfg.diffusion != src.diffusion:
        default = DiffusionConfig()  # a value left at its default takes the scheduler's; a set one must agree
        diff = [f"diffusion.{k}: the config says {getattr(cfg.diffusion, k)!r}, {src.where}/scheduler has "
                f"{getattr(src.diffusion, k)!r}" for k in DIFFUSION_FIELDS
                if getattr(cfg.diffusion, k) != getattr(default, k) and getattr(cfg.diffusion, k) != getattr(src.diffusion, k)]
        if diff:
            raise ValueError("the diffusion config contradicts the imported scheduler (remove diffusion: or make it "
                             "match):\n  " + "\n  ".join(diff))
        kept = {k: getattr(cfg.diffusion, k) for k in ("loss_weighting", "min_snr_gamma", "offset_noise", "cond_drop_prob")}
        changes["diffusion"] = dataclasses.replace(src.diffusion, **kept)
    if src.text_path and not cfg.text.path:
        changes["text"] = dataclasses.replace(cfg.text, path=src.text_path, max_length=src.text_max_length)
    return dataclasses.replace(cfg, **changes) if changes else cfg


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


def load_init_unet(src: InitSource | str, cfg: UNetConfig) -> nn.Module:
    src = read_init_source(src) if isinstance(src, str) else src
    unet = build_unet(cfg)
    unet.load_state_dict(merge_state(unet, src.state, src.where), strict=True)
    return unet

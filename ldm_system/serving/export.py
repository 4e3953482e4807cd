"""`ldm export CKPT OUT_DIR`: one self-contained model folder from a training checkpoint.

    OUT/unet/                 diffusers `UNet2DModel` / `UNet2DConditionModel` (safetensors)
    OUT/vae/                  diffusers `AutoencoderKL` with `scaling_factor` = latent scale (KL only)
    OUT/autoencoder/          our stage-1 checkpoint (KL or VQ), used by ldm sample/invert/edit
    OUT/scheduler/            diffusers `DDIMScheduler` config with the training noise schedule
    OUT/text_encoder/         transformers `CLIPTextModel` (text models only)
    OUT/tokenizer/            its tokenizer (text models only)
    OUT/ldm.json              our metadata: UNet and diffusion configs, latent scale, class names

The weights come from the checkpoint's consolidated `weights/` (gathered from ZeRO-3 shards when
it was written), EMA by default.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file

from ldm_system.config import load_config, to_dict
from ldm_system.models.exported import LDM_META
from ldm_system.models.unet import build_unet


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, use_ema: bool = True) -> Path:
    from diffusers import DDIMScheduler

    from ldm_system.train.runs import LDMRunConfig

    ckpt, out = resolve_checkpoint(checkpoint), Path(out_dir)
    if not (ckpt / "trainer.json").exists() or not (ckpt / "config.yaml").exists():
        raise FileNotFoundError(f"{ckpt} is not an ldm-system stage-2 checkpoint (trainer.json/config.yaml missing)")
    trainer = json.loads((ckpt / "trainer.json").read_text())
    if trainer.get("task") != "DiffusionTask":
        raise ValueError(f"{ckpt} holds a {trainer.get('task')!r} checkpoint; `ldm export` needs a stage-2 (DiffusionTask) one")
    cfg = load_config(LDMRunConfig, ckpt / "config.yaml")
    meta = trainer.get("task_metadata", {})
    weights = ckpt / "weights" / ("unet.ema.safetensors" if use_ema else "unet.safetensors")
    if not weights.exists():
        if use_ema:
            raise FileNotFoundError(f"{weights} not found: this run kept no EMA; export with --raw")
        raise FileNotFoundError(f"{weights} not found")
    state = {k.removeprefix("unet."): v for k, v in load_file(str(weights)).items()}
    unet = build_unet(cfg.unet)
    unet.load_state_dict(state, strict=True)
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(str(out / "unet"), safe_serialization=True)
    DDIMScheduler(**cfg.diffusion.diffusers_scheduler_config()).save_pretrained(str(out / "scheduler"))
    ae_path = meta.get("autoencoder") or ""
    if ae_path:
        _copy_autoencoder(Path(ae_path), out)
    text = _copy_text_encoder(meta.get("text_encoder"), out) if cfg.unet.conditioning == "text" else None
    info = {
        "format": "ldm-system/model",
        "version": 1,
        "unet": to_dict(cfg.unet),
        "diffusion": to_dict(cfg.diffusion),
        "latent_scale": float(meta.get("latent_scale", 1.0)),
        "classes": list(meta.get("classes", [])),
        "weights": "ema" if use_ema else "raw",
        "step": int(trainer["step"]),
        "source_checkpoint": str(ckpt.resolve()),
        "has_autoencoder": bool(ae_path),
        "text_encoder": text,  # {source, max_length, hidden_size} or None
    }
    (out / LDM_META).write_text(json.dumps(info, indent=2))
    return out


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, a run folder (its newest checkpoint) or a `checkpoints/latest` pointer."""
    from ldm_system.train import checkpoint as ckpt

    p = Path(path)
    if p.is_file() and p.name == ckpt.LATEST:
        p = p.parent / p.read_text().strip()
    elif (p / "checkpoints").is_dir():
        found = ckpt.resolve("latest", p)
        if found is None:
            raise FileNotFoundError(f"{path}: the run has no complete checkpoint yet")
        p = found
    if not p.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    return p


def _copy_text_encoder(info: dict | None, out: Path) -> dict:
    """Re-save the run's text encoder as OUT/text_encoder + OUT/tokenizer (whatever layout it came in)."""
    from ldm_system.models.text import TextEncoder

    if not info or not info.get("source"):
        raise ValueError("the checkpoint records no text encoder; cannot export a text-conditioned model without it")
    src = Path(info["source"])
    if not src.is_dir():
        raise FileNotFoundError(f"the run's text encoder {src} is gone; cannot export a text model without it")
    enc = TextEncoder.from_pretrained(src, int(info["max_length"]))
    if enc.hidden_size != int(info["hidden_size"]):
        raise ValueError(f"the text encoder at {src} now has hidden size {enc.hidden_size}, the run used {info['hidden_size']}")
    enc.save_pretrained(out)
    return enc.describe()


def _copy_autoencoder(src: Path, out: Path) -> None:
    from autoencoders.io import export_diffusers, load_autoencoder

    if not (src / "autoencoder.json").exists():
        raise FileNotFoundError(f"the run's autoencoder {src} is gone; cannot export a latent model without it")
    dst = out / "autoencoder"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("diffusers"))
    ae, meta = load_autoencoder(dst)
    if ae.kind == "kl":
        export_diffusers(ae, meta.latent_scale, out / "vae")

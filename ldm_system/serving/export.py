"""`ldm export CKPT OUT_DIR`: one self-contained model folder from a training checkpoint, loadable by
our tools (ldm.json) and by stock diffusers (model_index.json):

    OUT/unet/                 diffusers `UNet2DModel` / `UNet2DConditionModel` (safetensors)
    OUT/vae/                  diffusers `AutoencoderKL` with `scaling_factor` = latent scale (KL only)
    OUT/vqvae/                diffusers `VQModel` (VQ, when our quantizer maps onto it exactly)
    OUT/autoencoder/          our stage-1 checkpoint (KL or VQ), used by ldm sample/invert/edit
    OUT/scheduler/            diffusers `DDIMScheduler` config with the training noise schedule and grid
    OUT/text_encoder/         transformers `CLIPTextModel` (text models only)
    OUT/tokenizer/            its tokenizer, model_max_length = the length we pad to (text models only)
    OUT/model_index.json      the stock pipeline (serving/diffusers_pipeline.py says which)
    OUT/pipeline.py           class-conditional models: our pipeline for diffusers' `custom_pipeline`
    OUT/lora/                 LoRA runs of text models: the adapters alone (`pipe.load_lora_weights`); unet/ is merged
    OUT/ldm.json              our metadata: UNet and diffusion configs, latent scale, class names

The weights come from the checkpoint's consolidated `weights/` (gathered from ZeRO-3 shards when
it was written), EMA by default. The checkpoint is read through the artifact layer
(`ldm_system/artifacts`), so exporting needs nothing of the training package.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ldm_system.artifacts.kinds import LDM_META, resolve_checkpoint
from ldm_system.config import to_dict
from ldm_system.models.unet import build_unet


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, use_ema: bool = True) -> Path:
    from ldm_system.artifacts.checkpoints import read_stage2
    from ldm_system.artifacts.scheduler import write_ddim_scheduler
    from ldm_system.serving.diffusers_pipeline import sampling_grid, write_model_index

    ck = read_stage2(checkpoint)
    out = Path(out_dir)
    state = ck.unet_state(use_ema)
    unet = build_unet(ck.unet)
    out.mkdir(parents=True, exist_ok=True)
    lora_dir = None
    if ck.lora.enabled:  # adapters alone for load_lora_weights, then merged: unet/ is the fine-tuned model
        from ldm_system.models.lora import add_lora, merge_lora, save_lora

        add_lora(unet, ck.lora)
        unet.load_state_dict(state, strict=True)
        if ck.unet.conditioning == "text":
            lora_dir = save_lora(unet, ck.lora, out)
        merge_lora(unet)
    else:
        unet.load_state_dict(state, strict=True)
    unet.save_pretrained(str(out / "unet"), safe_serialization=True)
    grid = sampling_grid(ck.unet)
    write_ddim_scheduler(ck.diffusion, grid, out / "scheduler")
    ae_path = ck.meta.get("autoencoder") or ""
    scale = float(ck.meta.get("latent_scale", 1.0))
    ae_kind, ae_note = (_copy_autoencoder(Path(ae_path), out, scale) if ae_path else (None, ""))
    text = _copy_text_encoder(ck.meta.get("text_encoder"), out) if ck.unet.conditioning == "text" else None
    pipeline, reason = write_model_index(out, ck.unet, ae_kind, ae_note)
    info = {
        "format": "ldm-system/model",
        "version": 1,
        "unet": to_dict(ck.unet),
        "diffusion": to_dict(ck.diffusion),
        "latent_scale": float(ck.meta.get("latent_scale", 1.0)),
        "classes": list(ck.meta.get("classes", [])),
        "weights": "ema" if use_ema else "raw",
        "step": ck.step,
        "source_checkpoint": str(ck.path.resolve()),
        "has_autoencoder": bool(ae_path),
        "text_encoder": text,  # {source, max_length, hidden_size} or None
        "diffusers_pipeline": pipeline,  # the class stock diffusers loads, or None
        "diffusers_pipeline_refused": reason,  # why not, when None
        "lora": {"rank": ck.lora.rank, "alpha": ck.lora.alpha or ck.lora.rank, "targets": list(ck.lora.targets),
                 "adapter": str(lora_dir.name) if lora_dir else None} if ck.lora.enabled else None,
    }
    (out / LDM_META).write_text(json.dumps(info, indent=2))
    return out


def _copy_text_encoder(info: dict | None, out: Path) -> dict:
    """Re-save the run's text encoder as OUT/text_encoder + OUT/tokenizer (whatever layout it came in).
    The tokenizer's model_max_length becomes the length we pad to: stock pipelines pad to it."""
    from ldm_system.models.text import TextEncoder

    if not info or not info.get("source"):
        raise ValueError("the checkpoint records no text encoder; cannot export a text-conditioned model without it")
    src = Path(info["source"])
    if not src.is_dir():
        raise FileNotFoundError(f"the run's text encoder {src} is gone; cannot export a text model without it")
    enc = TextEncoder.from_pretrained(src, int(info["max_length"]))
    if enc.hidden_size != int(info["hidden_size"]):
        raise ValueError(f"the text encoder at {src} now has hidden size {enc.hidden_size}, the run used {info['hidden_size']}")
    enc.tokenizer.model_max_length = enc.max_length
    enc.save_pretrained(out)
    return enc.describe()


def _copy_autoencoder(src: Path, out: Path, run_scale: float) -> tuple[str, str]:
    """Copy our stage-1 folder (or rebuild a diffusers one as ours) into OUT/autoencoder and write its
    diffusers twin (vae/ or vqvae/). Returns (kind, why there is no twin or ""). `run_scale` is the scale
    the run trained with (measured on its images when a diffusers folder named none)."""
    from autoencoders.diffusers_io import NotRepresentableError, export_vq_diffusers
    from autoencoders.io import META_FILE, export_diffusers, load_autoencoder, save_autoencoder, stage1_folder

    try:
        folder = stage1_folder(src)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"the run's autoencoder {src} is gone; cannot export a latent model without it") from e
    dst = out / "autoencoder"
    if dst.exists():
        shutil.rmtree(dst)
    if (folder / META_FILE).is_file():
        shutil.copytree(folder, dst, ignore=shutil.ignore_patterns("diffusers"))
        ae, meta = load_autoencoder(dst)
    else:
        ae, meta = load_autoencoder(folder, scale_from=lambda _: run_scale)
        save_autoencoder(ae, meta.config, run_scale, dst)
    # The twin's scaling_factor is the scale the run trained with: the mode's or the samples' (our
    # own folder keeps both), so a stock pipeline decodes exactly what the UNet learned.
    if ae.kind == "kl":
        export_diffusers(ae, run_scale, out / "vae")
        return "kl", ""
    try:
        export_vq_diffusers(ae, run_scale, out / "vqvae")
    except NotRepresentableError as e:
        return "vq", str(e)
    return "vq", ""


__all__ = ["export_checkpoint", "resolve_checkpoint"]

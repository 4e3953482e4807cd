"""A model folder as plain sampling parts: the denoiser, the frozen codec, the diffusion config, the
sampling grid, the class names and (text models) the text encoder.

Two kinds load here: our `ldm export` folder (described by ldm.json; layout in serving/export.py) and
a diffusers pipeline folder (`model_index.json` with unet/, vae/ or vqvae/, scheduler/, and for
text models text_encoder/ + tokenizer/). Serving, `ldm report` and the eval generator all use it.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from ldm_system.artifacts.kinds import LDM_META, Kind, detect
from ldm_system.artifacts.scheduler import SamplingGrid, read_scheduler
from ldm_system.config import from_dict
from ldm_system.diffusion.config import DiffusionConfig
from ldm_system.models.latent import LatentCodec
from ldm_system.models.text import TEXT_ENCODER_DIR, TextEncoder
from ldm_system.models.unet import Denoiser, UNetConfig


@dataclass(frozen=True)
class ExportedLDM:
    denoiser: Denoiser  # eval mode, no gradients
    codec: LatentCodec
    diffusion: DiffusionConfig
    classes: tuple[str, ...]
    text: TextEncoder | None  # text-conditioned models only
    grid: SamplingGrid = field(default_factory=SamplingGrid)  # the scheduler's timestep convention

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the model makes: the latent side times the codec's factor f."""
        u = self.denoiser.cfg
        if self.codec.is_identity:
            return (u.in_channels, u.sample_size, u.sample_size)
        ae = self.codec.ae.cfg
        return (ae.in_channels, u.sample_size * ae.f, u.sample_size * ae.f)


def load_exported_ldm(path: str | Path, device: str | torch.device = "cpu") -> ExportedLDM:
    """Load an `ldm export` folder or a diffusers pipeline folder; clear errors for other folders."""
    path = Path(path)
    if path.is_dir() and not (path / LDM_META).exists() and detect(path) is Kind.DIFFUSERS_PIPELINE:
        return load_diffusers_pipeline(path, device)
    from diffusers import UNet2DConditionModel, UNet2DModel

    meta, ucfg, dcfg = _read_meta(path)
    kind = UNet2DConditionModel if ucfg.conditioning == "text" else UNet2DModel
    with _weights_of(path / "unet"):
        unet = kind.from_pretrained(str(path / "unet"))
    codec = LatentCodec.identity()
    if meta.get("has_autoencoder"):
        with _weights_of(path / "autoencoder"):
            codec = _run_codec(path / "autoencoder", float(meta["latent_scale"]))
    if abs(codec.scale - float(meta["latent_scale"])) > 1e-6 * max(1.0, codec.scale):
        raise ValueError(f"{path}: latent scale in {LDM_META} ({meta['latent_scale']}) differs from the "
                         f"autoencoder's ({codec.scale})")
    text = None
    if ucfg.conditioning == "text":
        if not meta.get("text_encoder"):
            raise ValueError(f"{path}: a text-conditioned model without a text encoder in {LDM_META}; re-export it")
        with _weights_of(path / TEXT_ENCODER_DIR):
            text = TextEncoder.from_pretrained(path, int(meta["text_encoder"]["max_length"])).to(device)
    grid = read_scheduler(path / "scheduler")[1] if (path / "scheduler").is_dir() else SamplingGrid()
    denoiser = Denoiser(ucfg, unet).to(device).eval().requires_grad_(False)
    codec.to(device)
    return ExportedLDM(denoiser, codec, dcfg, tuple(meta.get("classes", [])), text, grid)


def _run_codec(folder: Path, run_scale: float) -> LatentCodec:
    """The exported autoencoder at the scale the model trained with: its mode's, or (a run on
    posterior samples) its samples' one; another scale is left for the caller's mismatch check."""
    from autoencoders.io import load_autoencoder

    ae, meta = load_autoencoder(folder)
    stored = [s for s in (meta.latent_scale, meta.sample_latent_scale) if s]
    scale = next((s for s in stored if abs(s - run_scale) <= 1e-6 * max(1.0, s)), meta.latent_scale)
    return LatentCodec(ae, scale, sample_posterior=False)


def load_diffusers_pipeline(path: Path, device: str | torch.device = "cpu") -> ExportedLDM:
    """A diffusers pipeline folder (Stable-Diffusion-style or CompVis LDM-style) as sampling parts."""
    from ldm_system.artifacts.diffusers_unet import load_unet_folder

    ucfg, unet = load_unet_folder(path / "unet")
    dcfg, grid = read_scheduler(path / "scheduler")
    codec = LatentCodec.identity()
    if (path / "vae").is_dir() or (path / "vqvae").is_dir():
        codec = LatentCodec.from_checkpoint(path, sample_posterior=False)  # finds vae/ or vqvae/
        if codec.ae.cfg.latent_channels != ucfg.in_channels:
            raise ValueError(f"{path}: the autoencoder makes {codec.ae.cfg.latent_channels}-channel latents, the UNet "
                             f"takes {ucfg.in_channels} channels")
    text = load_pipeline_text(path) if ucfg.conditioning == "text" else None
    if text is not None:
        text.to(device)
    return ExportedLDM(Denoiser(ucfg, unet).to(device).eval().requires_grad_(False), codec.to(device), dcfg,
                       (), text, grid)


def load_pipeline_text(path: Path) -> TextEncoder:
    """text_encoder/ + tokenizer/ of a pipeline folder; L = the tokenizer's model_max_length (as stock
    pipelines pad), capped by the text model's positions."""
    if not (path / TEXT_ENCODER_DIR).is_dir():
        raise FileNotFoundError(f"{path}: a text-conditioned UNet without {TEXT_ENCODER_DIR}/")
    tok = json.loads((path / "tokenizer" / "tokenizer_config.json").read_text()) \
        if (path / "tokenizer" / "tokenizer_config.json").is_file() else {}
    positions = json.loads((path / TEXT_ENCODER_DIR / "config.json").read_text()).get("max_position_embeddings", 77)
    length = min(int(tok.get("model_max_length") or positions), int(positions))
    with _weights_of(path / TEXT_ENCODER_DIR):
        return TextEncoder.from_pretrained(path, length)


def _read_meta(path: Path) -> tuple[dict, UNetConfig, DiffusionConfig]:
    """The folder's description (ldm.json): its raw dict, the UNet and the diffusion configs."""
    meta_file = path / LDM_META
    if not meta_file.exists():
        raise FileNotFoundError(f"{path} is not an exported ldm-system model (no {LDM_META}) nor a diffusers pipeline "
                                "folder (no model_index.json); run `ldm export` first")
    try:
        meta = json.loads(meta_file.read_text())
        ucfg = from_dict(UNetConfig, meta["unet"], source=str(meta_file), where="unet")
        dcfg = from_dict(DiffusionConfig, meta["diffusion"], source=str(meta_file), where="diffusion")
        float(meta["latent_scale"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:  # ConfigError (a ValueError) passes as it is
        raise ValueError(f"{meta_file}: not a readable ldm-system model description ({type(e).__name__}: {e})") from e
    return meta, ucfg, dcfg


@contextmanager
def _weights_of(folder: Path) -> Iterator[None]:
    """A failed load of `folder`'s weights (truncated, not safetensors) → one error naming the file:
    diffusers raises an OSError and safetensors its own error, and neither always names it."""
    from safetensors import SafetensorError

    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"{folder}: no weights (*.safetensors) there; re-export or copy the model again")
    try:
        yield
    except (OSError, SafetensorError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{', '.join(map(str, files))}: cannot load the weights, the file is truncated or damaged "
                         f"({reason}); re-export or copy the model again") from e


__all__ = ["ExportedLDM", "load_exported_ldm", "load_diffusers_pipeline", "load_pipeline_text"]

"""An `ldm export` folder as plain parts: the denoiser, the frozen codec, the diffusion config, the
class names and (text models) the text encoder.

This is the one loader of that folder below serving and evaluation: `ldm report` builds its LDM
generator from it without importing the serving pipeline, and the pipeline can wrap the same parts.
The folder's layout is documented in `ldm_system/serving/export.py`, which writes it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ldm_system.config import from_dict
from ldm_system.diffusion.config import DiffusionConfig
from ldm_system.models.latent import LatentCodec
from ldm_system.models.text import TextEncoder
from ldm_system.models.unet import Denoiser, UNetConfig

LDM_META = "ldm.json"


@dataclass(frozen=True)
class ExportedLDM:
    denoiser: Denoiser  # eval mode, no gradients
    codec: LatentCodec
    diffusion: DiffusionConfig
    classes: tuple[str, ...]
    text: TextEncoder | None  # text-conditioned models only

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the model makes: the latent side times the codec's factor f."""
        u = self.denoiser.cfg
        if self.codec.is_identity:
            return (u.in_channels, u.sample_size, u.sample_size)
        ae = self.codec.ae.cfg
        return (ae.in_channels, u.sample_size * ae.f, u.sample_size * ae.f)


def load_exported_ldm(path: str | Path, device: str | torch.device = "cpu") -> ExportedLDM:
    """Load an `ldm export` folder; clear errors for other folders and inconsistent metadata."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    path = Path(path)
    meta_file = path / LDM_META
    if not meta_file.exists():
        raise FileNotFoundError(f"{path} is not an exported ldm-system model (no {LDM_META}); run `ldm export` first")
    meta = json.loads(meta_file.read_text())
    ucfg = from_dict(UNetConfig, meta["unet"], source=str(meta_file), where="unet")
    dcfg = from_dict(DiffusionConfig, meta["diffusion"], source=str(meta_file), where="diffusion")
    kind = UNet2DConditionModel if ucfg.conditioning == "text" else UNet2DModel
    unet = kind.from_pretrained(str(path / "unet"))
    codec = (LatentCodec.from_checkpoint(path / "autoencoder", sample_posterior=False) if meta.get("has_autoencoder")
             else LatentCodec.identity())
    if abs(codec.scale - float(meta["latent_scale"])) > 1e-6 * max(1.0, codec.scale):
        raise ValueError(f"{path}: latent scale in {LDM_META} ({meta['latent_scale']}) differs from the "
                         f"autoencoder's ({codec.scale})")
    text = None
    if ucfg.conditioning == "text":
        if not meta.get("text_encoder"):
            raise ValueError(f"{path}: a text-conditioned model without a text encoder in {LDM_META}; re-export it")
        text = TextEncoder.from_pretrained(path, int(meta["text_encoder"]["max_length"])).to(device)
    denoiser = Denoiser(ucfg, unet).to(device).eval().requires_grad_(False)
    codec.to(device)
    return ExportedLDM(denoiser, codec, dcfg, tuple(meta.get("classes", [])), text)

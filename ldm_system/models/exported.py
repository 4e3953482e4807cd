"""An `ldm export` folder as plain parts: the denoiser, the frozen codec, the diffusion config, the
class names and (text models) the text encoder.

This is the one loader of that folder below serving and evaluation: `ldm report` builds its LDM
generator from it without importing the serving pipeline, and the pipeline can wrap the same parts.
The folder's layout is documented in `ldm_system/serving/export.py`, which writes it.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ldm_system.config import from_dict
from ldm_system.diffusion.config import DiffusionConfig
from ldm_system.models.latent import LatentCodec
from ldm_system.models.text import TEXT_ENCODER_DIR, TextEncoder
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
    meta, ucfg, dcfg = _read_meta(path)
    kind = UNet2DConditionModel if ucfg.conditioning == "text" else UNet2DModel
    with _weights_of(path / "unet"):
        unet = kind.from_pretrained(str(path / "unet"))
    codec = LatentCodec.identity()
    if meta.get("has_autoencoder"):
        with _weights_of(path / "autoencoder"):
            codec = LatentCodec.from_checkpoint(path / "autoencoder", sample_posterior=False)
    if abs(codec.scale - float(meta["latent_scale"])) > 1e-6 * max(1.0, codec.scale):
        raise ValueError(f"{path}: latent scale in {LDM_META} ({meta['latent_scale']}) differs from the "
                         f"autoencoder's ({codec.scale})")
    text = None
    if ucfg.conditioning == "text":
        if not meta.get("text_encoder"):
            raise ValueError(f"{path}: a text-conditioned model without a text encoder in {LDM_META}; re-export it")
        with _weights_of(path / TEXT_ENCODER_DIR):
            text = TextEncoder.from_pretrained(path, int(meta["text_encoder"]["max_length"])).to(device)
    denoiser = Denoiser(ucfg, unet).to(device).eval().requires_grad_(False)
    codec.to(device)
    return ExportedLDM(denoiser, codec, dcfg, tuple(meta.get("classes", [])), text)


def _read_meta(path: Path) -> tuple[dict, UNetConfig, DiffusionConfig]:
    """The folder's description (ldm.json): its raw dict, the UNet and the diffusion configs."""
    meta_file = path / LDM_META
    if not meta_file.exists():
        raise FileNotFoundError(f"{path} is not an exported ldm-system model (no {LDM_META}); run `ldm export` first")
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

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no weights (*.safetensors) there; re-export or copy the model again")
    try:
        yield
    except (OSError, SafetensorError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{', '.join(map(str, files))}: cannot load the weights, the file is truncated or damaged "
                         f"({reason}); re-export or copy the model again") from e

"""The frozen stage-1 codec seen by stage 2: images ↔ *scaled* latents.

    encode: x (B, C, H, W) in [-1, 1] → z = scale · E(x)   (B, c, H/f, W/f)
    decode: z → D(z / scale)                               (B, C, H, W)

`scale` = 1/std of unscaled latents, measured after stage 1 and stored in the autoencoder's
metadata (never a literal here). Without an autoencoder the codec is the identity (pixel-space
diffusion, scale 1). The autoencoder runs in fp32 under no_grad even inside bf16/fp16 autocast.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class LatentCodec:
    def __init__(self, autoencoder: nn.Module | None, scale: float, sample_posterior: bool = True,
                 stored_scale: float | None = None) -> None:
        if not (scale > 0 and torch.isfinite(torch.tensor(scale))):
            raise ValueError(f"latent scale must be a positive finite number, got {scale}")
        self.ae, self.scale, self.sample_posterior = autoencoder, float(scale), sample_posterior
        # latent shards hold z · stored_scale (the mode's); a run on posterior samples uses another scale
        self.stored_scale = float(stored_scale or scale)
        if self.ae is not None:
            self.ae.eval().requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, path: str | Path, sample_posterior: bool = True, scale_from=None) -> "LatentCodec":
        """Our stage-1 folder or a diffusers AutoencoderKL/VQModel one; `scale_from(ae) -> float` measures
        the scale of a diffusers folder that names none."""
        from autoencoders.io import load_autoencoder

        ae, meta = load_autoencoder(path, scale_from=scale_from)
        return cls(ae, meta.latent_scale, sample_posterior)

    @classmethod
    def identity(cls) -> "LatentCodec":
        return cls(None, 1.0)

    def to(self, device: torch.device | str) -> "LatentCodec":
        if self.ae is not None:
            self.ae.to(device)
        return self

    @property
    def is_identity(self) -> bool:
        return self.ae is None

    def from_stored(self, z: torch.Tensor) -> torch.Tensor:
        """Latents as the shards store them (z · stored_scale) → z · scale, what this run trains on."""
        return z if self.stored_scale == self.scale else z * (self.scale / self.stored_scale)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.ae is None:
            return images
        with torch.autocast(images.device.type, enabled=False):
            z = self.ae.encode_latents(images.float(), sample=self.sample_posterior)
        return z * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.ae is None:
            return z
        with torch.autocast(z.device.type, enabled=False):
            return self.ae.decode(z.float() / self.scale)

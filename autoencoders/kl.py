"""KL-regularised autoencoder: diffusers' `AutoencoderKL` architecture behind the stage-1 interface.

Shapes, with f = 2 ** (len(channels) - 1) and c = latent_channels:
    x (B, C, H, W) in [-1, 1]  --encode-->  posterior over z (B, c, H/f, W/f)  --decode-->  (B, C, H, W)

The diffusers model is kept whole as `self.vae`, so export to the diffusers format is its own
`save_pretrained` (see autoencoders/io.py). Its `scaling_factor` config entry is left at 1.0 in
memory: the measured latent scale lives in checkpoint metadata and is written only on export.
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

from autoencoders.config import AutoencoderConfig


class KLAutoencoder(nn.Module):
    kind = "kl"

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        if cfg.kind != "kl":
            raise ValueError(f"KLAutoencoder needs model.kind='kl', got {cfg.kind!r}")
        self.cfg = cfg
        levels = len(cfg.channels)
        self.vae = AutoencoderKL(
            in_channels=cfg.in_channels,
            out_channels=cfg.in_channels,
            down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(cfg.channels),
            layers_per_block=cfg.layers_per_block,
            latent_channels=cfg.latent_channels,
            norm_num_groups=cfg.norm_groups,
            mid_block_add_attention=cfg.mid_attention,
            scaling_factor=1.0,  # placeholder; the real scale is checkpoint metadata
        )

    @property
    def last_layer_weight(self) -> torch.Tensor:
        """Decoder output conv weight: where the adaptive GAN weight compares gradient norms."""
        return self.vae.decoder.conv_out.weight

    def enable_gradient_checkpointing(self) -> None:
        """Activation checkpointing of the encoder/decoder blocks (the engine's `prepare` calls this)."""
        self.vae.enable_gradient_checkpointing()

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """Posterior q(z|x) with `.mean`, `.logvar` (clamped to [-30, 20]), `.sample()`, `.mode()`."""
        self.cfg.check_images(x)
        return self.vae.encode(x).latent_dist

    def encode_latents(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Unscaled latents (B, c, H/f, W/f): posterior sample or mode (mean)."""
        posterior = self.encode(x)
        return posterior.sample() if sample else posterior.mode()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (B, c, h, w) -> images (B, C, h*f, w*f), not clamped."""
        self.cfg.check_latents(z)
        return self.vae.decode(z).sample

    def forward(self, x: torch.Tensor, sample_posterior: bool = True) -> dict[str, torch.Tensor]:
        """Training forward. Returns recon (B, C, H, W), latents and the posterior's mean/logvar."""
        posterior = self.encode(x)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return {"recon": self.decode(z), "latents": z, "mean": posterior.mean, "logvar": posterior.logvar}

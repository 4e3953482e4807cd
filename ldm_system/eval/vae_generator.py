"""A KL autoencoder as a generator: the VAE row of `ldm report`.

A KL autoencoder is a VAE whose prior is N(0, I): sampling draws z ~ N(0, I) of the latent shape
and decodes it. How good that is depends on the KL weight it was trained with. Ours (the LDM's
stage 1) uses a tiny weight (1e-6), which keeps the posterior close to the data rather than to the
prior: its latents then have std far from 1 (the latent scale records it) and prior samples decode
to the blurry, often implausible images the classic comparison calls "the VAE". `prior="matched"`
draws z ~ N(0, (1/scale)² I) instead, the Gaussian with the latents' measured std, as a fairer
second row.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from autoencoders.io import load_autoencoder


class VAEPriorGenerator:
    def __init__(self, path: str | Path, image_size: int, prior: Literal["standard", "matched"] = "standard",
                 device: str = "cpu") -> None:
        ae, meta = load_autoencoder(path, device=device)
        if meta.kind != "kl":
            raise ValueError(f"{path}: a {meta.kind!r} autoencoder has no continuous prior to sample from; the VAE "
                             "row needs a KL autoencoder")
        cfg = meta.config
        if image_size % cfg.f:
            raise ValueError(f"{path}: image size {image_size} is not a multiple of the autoencoder's f = {cfg.f}")
        self.ae, self.device = ae, torch.device(device)
        self.std = 1.0 if prior == "standard" else 1.0 / meta.scale_for(sample_posterior=True)  # posterior samples' std
        self.image_shape = (cfg.in_channels, image_size, image_size)
        self.latent_shape = (cfg.latent_channels, image_size // cfg.f, image_size // cfg.f)

    @torch.no_grad()
    def sample(self, num: int, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        z = self.std * torch.randn(num, *self.latent_shape, generator=gen)
        return self.ae.decode(z.to(self.device)).clamp(-1, 1)


__all__ = ["VAEPriorGenerator"]

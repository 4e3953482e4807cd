"""Build an autoencoder from its config, and measure its latent scale.

Both model kinds share one interface:
    encode_latents(x, sample=False) -> z (B, c, H/f, W/f)     unscaled latents
    decode(z) -> x_hat (B, C, H, W)
    forward(x, sample_posterior=True) -> {"recon": ..., "latents": ..., kind-specific terms}
    last_layer_weight, downsample_factor, latent_channels, kind
"""
from __future__ import annotations

import math
from typing import Iterable, Union

import torch

from autoencoders.config import AutoencoderConfig
from autoencoders.kl import KLAutoencoder
from autoencoders.vq import VQAutoencoder

Autoencoder = Union[KLAutoencoder, VQAutoencoder]

MODELS = {"kl": KLAutoencoder, "vq": VQAutoencoder}


def build_autoencoder(cfg: AutoencoderConfig) -> Autoencoder:
    return MODELS[cfg.kind](cfg)


def images_of(item):
    """The images of one item of an image iterator: a bare tensor (B, C, H, W), or a batch with
    `.images` (the data stream's `Batch`, read by duck typing: this package never imports
    `ldm_system`). Anything else comes back unchanged for the caller to reject."""
    return item if isinstance(item, torch.Tensor) else getattr(item, "images", item)


class _Moments:
    """Running mean and variance of every element seen, in float64."""

    def __init__(self) -> None:
        self.total, self.total_sq, self.count = 0.0, 0.0, 0

    def add(self, z: torch.Tensor) -> None:
        z = z.double()
        self.total += z.sum().item()
        self.total_sq += z.pow(2).sum().item()
        self.count += z.numel()

    def inverse_std(self) -> float:
        if self.count < 2:
            raise ValueError("measure_latent_scale got no images (empty iterator?)")
        mean = self.total / self.count
        var = (self.total_sq - self.count * mean * mean) / (self.count - 1)
        if not var > 0 or not math.isfinite(var):
            raise ValueError(f"latent variance is {var}; cannot derive a latent scale")
        return 1.0 / math.sqrt(var)


@torch.no_grad()
def measure_latent_scales(ae: Autoencoder, images_iter: Iterable, max_batches: int = 50) -> dict[str, float]:
    """1 / std of the latents over up to `max_batches` batches of training images, for each latent a
    diffusion model may train on: {"mode": s_mode, "sample": s_sample} (KL: the posterior mean, and a
    posterior sample drawn from the same pass), {"mode": s} (VQ: the pre-quantization latents).

    The diffusion model then sees z · s with unit variance (LDM sec. 4.3 / appendix G, the "scale
    factor"), as long as it trains on the kind of latent s was measured on: an under-trained KL
    autoencoder's posterior variance can dwarf the spread of its means (sample std ≫ mode std).
    The std is taken over all latent elements around their global mean.
    """
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    was_training = ae.training
    ae.eval()
    device = next(ae.parameters()).device
    mode, sample = _Moments(), _Moments()
    try:
        for i, item in enumerate(images_iter):
            if i >= max_batches:
                break
            x = images_of(item).to(device)
            if ae.kind == "kl":
                posterior = ae.encode(x)
                mode.add(posterior.mode())
                sample.add(posterior.sample())
            else:
                mode.add(ae.encode_latents(x))
    finally:
        ae.train(was_training)
    return {"mode": mode.inverse_std(), **({"sample": sample.inverse_std()} if sample.count else {})}


def measure_latent_scale(
    ae: Autoencoder, images_iter: Iterable, max_batches: int = 50, sample: bool = True
) -> float:
    """The scale of posterior samples (`sample=True`) or of the mode (`measure_latent_scales`)."""
    scales = measure_latent_scales(ae, images_iter, max_batches)
    return scales["sample"] if sample and "sample" in scales else scales["mode"]

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


@torch.no_grad()
def measure_latent_scale(
    ae: Autoencoder, images_iter: Iterable, max_batches: int = 50, sample: bool = True
) -> float:
    """1 / std of the latents over up to `max_batches` batches of training images.

    The diffusion model then sees z * scale with unit variance (LDM sec. 4.3 / appendix G, the
    "scale factor"). KL: by default posterior samples, which is what a diffusion model trained on
    sampled latents sees (`sample=False` uses the posterior mode; with small KL weights the two
    agree closely). VQ: the continuous pre-quantization latents. The std is taken over all latent
    elements around their global mean, accumulated in float64.
    """
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    was_training = ae.training
    ae.eval()
    device = next(ae.parameters()).device
    total, total_sq, count = 0.0, 0.0, 0
    try:
        for i, item in enumerate(images_iter):
            if i >= max_batches:
                break
            z = ae.encode_latents(images_of(item).to(device), sample=sample).double()
            total += z.sum().item()
            total_sq += z.pow(2).sum().item()
            count += z.numel()
    finally:
        ae.train(was_training)
    if count < 2:
        raise ValueError("measure_latent_scale got no images (empty iterator?)")
    mean = total / count
    var = (total_sq - count * mean * mean) / (count - 1)
    if not var > 0 or not math.isfinite(var):
        raise ValueError(f"latent variance is {var}; cannot derive a latent scale")
    return 1.0 / math.sqrt(var)

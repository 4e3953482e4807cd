"""Stage-1 reconstruction and KL terms as plain functions, returning scalars. The adversarial terms
(D/G losses, R1, LeCam, the adaptive weight) are in `adversarial.py`, shared with the GAN baseline.

Reduction conventions (why the LDM weights keep their meaning): the reconstruction loss is a mean
over pixels, and the KL term is summed over latent elements then divided by the number of image
elements C*H*W. LDM sums both over elements, so the ratio, and hence kl_weight = 1e-6, is unchanged.
"""
from __future__ import annotations

import torch

from autoencoders.config import REC_LOSSES


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """mean |x_hat - x| (l1) or mean (x_hat - x)^2 (l2)."""
    if recon.shape != target.shape:
        raise ValueError(f"reconstruction shape {tuple(recon.shape)} != target shape {tuple(target.shape)}")
    if kind == "l1":
        return (recon - target).abs().mean()
    if kind == "l2":
        return (recon - target).pow(2).mean()
    raise ValueError(f"unknown reconstruction loss {kind!r}; known: {list(REC_LOSSES)}")


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor, image_elements: int) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2) per image,
    divided by `image_elements` (C*H*W of the input image), averaged over the batch."""
    if mean.shape != logvar.shape:
        raise ValueError(f"mean shape {tuple(mean.shape)} != logvar shape {tuple(logvar.shape)}")
    if image_elements <= 0:
        raise ValueError(f"image_elements must be > 0, got {image_elements}")
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)  # (B,)
    return kl.mean() / image_elements

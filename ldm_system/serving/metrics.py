"""What an inversion reports: x_T, the reconstruction, and how close it came (PSNR, SSIM, latent MSE).

The autoencoder alone bounds what any inversion can reach (it decodes the input's own latents), so
`autoencoder_psnr` is printed next to the inversion's PSNR by `ldm invert`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ldm_system.diffusion.inversion import latent_mse
from ldm_system.models.latent import LatentCodec


@dataclass(frozen=True)
class InversionResult:
    x_T: torch.Tensor  # (B, c, h, w) inverted noise
    latents: torch.Tensor  # (B, c, h, w) encoded input (scaled)
    recon_latents: torch.Tensor
    images: torch.Tensor  # the input as seen by the model (B, C, H, W), [-1, 1]
    reconstruction: torch.Tensor  # decoded reconstruction, [-1, 1]
    psnr: list[float]  # dB, per image, on [0, 1]
    ssim: list[float]
    latent_mse: list[float]
    # null-condition inversion only: the fitted unconditional input of every sampling step, stacked
    # (steps, B, E) for class models (class-embedding vectors) or (steps, B, L, D) for text models
    # (null-text states). Replay: `pipe.reconstruct(x_T, ..., guidance=g, null_embeddings=...)`.
    null_embeddings: torch.Tensor | None = None


@torch.no_grad()
def inversion_result(codec: LatentCodec, images: torch.Tensor, z0: torch.Tensor, x_T: torch.Tensor,
                     zr: torch.Tensor, null_embeddings: torch.Tensor | None = None) -> InversionResult:
    """Decode the reconstructed latents zr and measure them against the input images (B, C, H, W)."""
    from ldm_system.eval.metrics import psnr, ssim

    rec = codec.decode(zr).clamp(-1, 1)
    a, b = (images + 1) / 2, (rec + 1) / 2  # metrics work on [0, 1]
    return InversionResult(
        x_T=x_T, latents=z0, recon_latents=zr, images=images, reconstruction=rec,
        psnr=[float(v) for v in psnr(b, a).reshape(-1)], ssim=[float(v) for v in ssim(b, a).reshape(-1)],
        latent_mse=[float(v) for v in latent_mse(zr, z0)], null_embeddings=null_embeddings,
    )


@torch.no_grad()
def autoencoder_psnr(codec: LatentCodec, result: InversionResult) -> list[float]:
    """PSNR (dB) of the codec's own round trip of the input: the ceiling for the inversion's PSNR."""
    from ldm_system.eval.metrics import psnr

    rec = codec.decode(result.latents).clamp(-1, 1)
    return psnr((rec + 1) / 2, (result.images + 1) / 2).reshape(-1).tolist()


__all__ = ["InversionResult", "autoencoder_psnr", "inversion_result"]

"""Reconstruction quality of a stage-1 autoencoder (the `ldm eval-ae` command's core).

Reported (all floats):
    psnr, ssim              mean over images, on [0, 1] images, recon clamped to [-1, 1] first
    fd_effnet_lite0         Fréchet distance between EfficientNet-Lite0 features of inputs and
                            reconstructions (an rFID-style number, NOT comparable to Inception rFID;
                            see features.EFFNET_FD_LABEL). Only with >= 2 images.
    codebook_usage          VQ only: fraction of codes used at least once over the whole set
    codebook_perplexity     VQ only: exp(entropy) of the code histogram over the whole set
    num_images
Reconstructions use the posterior mode (KL) and never change quantizer state (no grad, eval mode).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from autoencoders.factory import images_of
from ldm_system.eval.features import EFFNET_FD_LABEL, build_feature_extractor
from ldm_system.eval.metrics import frechet_distance_from_features, psnr, ssim

METRIC_LABELS = {
    "psnr": "PSNR (dB) on [0, 1] images",
    "ssim": "SSIM, Gaussian window 11/1.5, per channel",
    "fd_effnet_lite0": EFFNET_FD_LABEL,
    "codebook_usage": "fraction of VQ codes used on the evaluation set",
    "codebook_perplexity": "perplexity of the VQ code histogram on the evaluation set",
}


@torch.no_grad()
def eval_autoencoder(
    ae: nn.Module,
    batches: Iterable,
    features: nn.Module | None = None,
    max_batches: int | None = None,
    use_features: bool = True,
) -> dict[str, float]:
    """Run `ae` over `batches` (image tensors or batches with `.images`, images in [-1, 1]).

    `features` defaults to EfficientNet-Lite0 at 224 px; pass `use_features=False` to skip FD.
    """
    was_training = ae.training
    ae.eval()
    device = next(ae.parameters()).device
    if use_features and features is None:
        features = build_feature_extractor("effnet-lite0")
    if features is not None:
        features.to(device)
    psnrs, ssims, real_f, fake_f = [], [], [], []
    counts = None
    try:
        for i, item in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x = images_of(item).to(device).float()
            out = ae(x, sample_posterior=False)
            recon = out["recon"].float().clamp(-1.0, 1.0)
            x01, r01 = (x.clamp(-1, 1) + 1) / 2, (recon + 1) / 2
            psnrs.append(psnr(r01, x01))
            if min(x.shape[-2:]) >= 11:
                ssims.append(ssim(r01, x01))
            if use_features and features is not None:
                real_f.append(features(x).cpu())
                fake_f.append(features(recon).cpu())
            if "counts" in out:
                counts = out["counts"].double() if counts is None else counts + out["counts"].double()
    finally:
        ae.train(was_training)
    if not psnrs:
        raise ValueError("eval_autoencoder got no batches")
    result = {"num_images": float(sum(p.numel() for p in psnrs)), "psnr": torch.cat(psnrs).mean().item()}
    if ssims:
        result["ssim"] = torch.cat(ssims).mean().item()
    if real_f and result["num_images"] >= 2:
        key = "fd_" + getattr(features, "name", "features").replace("-", "_")  # fd_effnet_lite0 / fd_inception_v3
        result[key] = frechet_distance_from_features(torch.cat(real_f), torch.cat(fake_f))
    if counts is not None:
        probs = counts / counts.sum()
        result["codebook_usage"] = (counts > 0).double().mean().item()
        result["codebook_perplexity"] = torch.exp(-(probs * probs.clamp_min(1e-12).log()).sum()).item()
    return result

"""Stage-1 loss terms as plain functions. All return scalars unless stated.

Reduction conventions (why the LDM weights keep their meaning): the reconstruction loss is a mean
over pixels, and the KL term is summed over latent elements then divided by the number of image
elements C*H*W. LDM sums both over elements, so the ratio, and hence kl_weight = 1e-6, is unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from autoencoders.config import GAN_LOSSES, REC_LOSSES


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


def _check_gan_kind(kind: str) -> None:
    if kind not in GAN_LOSSES:
        raise ValueError(f"unknown GAN loss {kind!r}; known: {list(GAN_LOSSES)}")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """hinge:           E[relu(1 - D(x))] + E[relu(1 + D(x_hat))]
    non-saturating:  E[softplus(-D(x))] + E[softplus(D(x_hat))]   (= BCE with labels 1 / 0)"""
    _check_gan_kind(kind)
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """hinge: -E[D(x_hat)];  non-saturating: E[softplus(-D(x_hat))] = -E[log sigmoid(D(x_hat))]."""
    _check_gan_kind(kind)
    if kind == "hinge":
        return -fake_logits.mean()
    return F.softplus(-fake_logits).mean()


def adaptive_weight(
    nll_loss: torch.Tensor,
    gan_loss: torch.Tensor,
    last_layer: torch.Tensor,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> torch.Tensor:
    """lambda = ||grad_w L_nll|| / (||grad_w L_G|| + eps), clamped to [0, max_weight], detached
    (Esser et al. 2021, "Taming Transformers", eq. 7), with w the decoder's last layer weight.

    Finite for a zero GAN gradient: the denominator is then eps and the result is clamped.
    Uses retain_graph so the caller can still backpropagate the total loss.
    """
    grads = []
    for loss in (nll_loss, gan_loss):
        (g,) = torch.autograd.grad(loss, last_layer, retain_graph=True, allow_unused=True)
        grads.append(torch.zeros((), device=last_layer.device) if g is None else g.detach().float().norm())
    weight = grads[0] / (grads[1] + eps)
    return weight.clamp(0.0, max_weight).detach()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): 1/2 E ||grad_x D(x)||^2 on real images (which must require grad).
    Built with create_graph so it trains the discriminator."""
    if not real_images.requires_grad:
        raise ValueError("r1_penalty needs real_images.requires_grad_(True) before the discriminator forward")
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return 0.5 * grad.pow(2).flatten(1).sum(dim=1).mean()


def lecam_penalty(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, ema_real: torch.Tensor, ema_fake: torch.Tensor
) -> torch.Tensor:
    """LeCam regulariser (Tseng et al. 2021, eq. 3): E||D(x) - a_F||^2 + E||D(x_hat) - a_R||^2,
    with a_R, a_F the EMAs of the mean real / fake logits (detached anchors)."""
    return (real_logits - ema_fake.detach()).pow(2).mean() + (fake_logits - ema_real.detach()).pow(2).mean()


@torch.no_grad()
def update_lecam_anchors(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, ema_real: torch.Tensor, ema_fake: torch.Tensor, decay: float
) -> None:
    """In-place EMA update of the LeCam anchors (buffers owned by the discriminator)."""
    ema_real.mul_(decay).add_(real_logits.detach().float().mean(), alpha=1 - decay)
    ema_fake.mul_(decay).add_(fake_logits.detach().float().mean(), alpha=1 - decay)

"""The adversarial game shared by stage 1 (PatchGAN on reconstructions) and the GAN baseline
(`ldm_system/baselines/gan.py`, which imports it downward): one implementation of each piece.

Losses (`kind`), on discriminator logits r = D(x) (real) and f = D(x̃) (fake), any shape, averaged:
    hinge (Lim & Ye 2017; SNGAN):   L_D = E[relu(1 - r)] + E[relu(1 + f)],    L_G = -E[f]
    non-saturating (Goodfellow et al. 2014, §3):
                                    L_D = E[softplus(-r)] + E[softplus(f)]   (BCE with labels 1 / 0)
                                    L_G = E[softplus(-f)] = -E[log sigmoid f]
Stage-1 configs spell the second "non-saturating", GAN-baseline configs "non_saturating"; both
spellings are accepted so that every existing config keeps loading.

R1, one convention for both users (Mescheder et al. 2018, eq. 9): the regulariser added to L_D is
    γ/2 · E_x ||∇_x D(x)||²       on real images,
and `r1_penalty` returns ½ E_x ||∇_x D(x)||², so that its weight *is* γ: `loss.reg_weight` in
stage 1, `loss.r1_gamma` in the GAN baseline (times the lazy interval k there, StyleGAN2 §3.1).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

NON_SATURATING = ("non-saturating", "non_saturating")
LOSS_KINDS = ("hinge", *NON_SATURATING)


def _is_hinge(kind: str) -> bool:
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown GAN loss {kind!r}; known: {list(LOSS_KINDS)}")
    return kind == "hinge"


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """L_D of `kind` (module docstring); a scalar."""
    if _is_hinge(kind):
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """L_G of `kind` (module docstring); a scalar."""
    if _is_hinge(kind):
        return -fake_logits.mean()
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """½ E_x ||∇_x D(x)||² over the batch; weight it by γ (module docstring).

    `real_images` must require grad before the discriminator forward. Built with create_graph so the
    penalty trains D. The gradient of the *summed* logits is each sample's own gradient because D
    acts per sample (no batch norm); a patch discriminator's map sums over its patches.
    """
    if not real_images.requires_grad:
        raise ValueError("r1_penalty needs real_images.requires_grad_(True) before the discriminator forward")
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)  # (B, C, H, W)
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


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily set requires_grad=False on all parameters (restoring the previous flags).

    Why: the generator's loss runs through the raw discriminator inside this block, so autograd
    records no edge to D's parameters, no gradient lands on them, and D's DDP reducer is not involved.
    """
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)

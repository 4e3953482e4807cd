"""The adversarial terms shared by stage 1 and the GAN baseline, against hand-computed values:
hinge and non-saturating losses (both config spellings), R1 under its one convention
(γ/2 E||∇D||², the function returning ½ E||∇D||²), LeCam, the adaptive weight, `frozen`."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autoencoders.adversarial import (
    adaptive_weight,
    discriminator_loss,
    frozen,
    generator_loss,
    lecam_penalty,
    r1_penalty,
    update_lecam_anchors,
)

NS = ["non-saturating", "non_saturating"]  # stage-1 and GAN-baseline spellings of the same loss


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


# ---- D and G losses ------------------------------------------------------------------------------
def test_hinge_losses_on_hand_computed_logits():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    # E relu(1 - r) = (0 + 0.5) / 2;  E relu(1 + f) = (0 + 1.5) / 2
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.25 + 0.75)
    assert generator_loss(fake, "hinge").item() == pytest.approx(-(-2.0 + 0.5) / 2)
    confident_wrong = (torch.full((4, 1, 3, 3), -5.0), torch.full((4, 1, 3, 3), 5.0))
    assert discriminator_loss(*confident_wrong, "hinge").item() == pytest.approx(12.0)
    assert discriminator_loss(-confident_wrong[0], -confident_wrong[1], "hinge").item() == 0.0


@pytest.mark.parametrize("kind", NS)
def test_non_saturating_losses_on_hand_computed_logits(kind):
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.0, 3.0])
    d = (softplus(-2.0) + softplus(1.0)) / 2 + (softplus(0.0) + softplus(3.0)) / 2
    g = (softplus(0.0) + softplus(-3.0)) / 2  # -E log sigmoid(f)
    assert discriminator_loss(real, fake, kind).item() == pytest.approx(d, rel=1e-6)
    assert generator_loss(fake, kind).item() == pytest.approx(g, rel=1e-6)
    z = torch.zeros(2, 1, 2, 2)  # a coin-flip D: 2 ln 2
    assert discriminator_loss(z, z, kind).item() == pytest.approx(2 * math.log(2.0), rel=1e-6)


@pytest.mark.parametrize("kind", ["hinge", *NS])
def test_loss_signs_and_gradients(kind):
    # logits inside the hinge margin (|logit| < 1) so both losses have a gradient
    real, fake = torch.tensor([0.2, -0.3]), torch.tensor([0.1, -0.4])
    d0, g0 = discriminator_loss(real, fake, kind), generator_loss(fake, kind)
    assert discriminator_loss(real + 0.1, fake, kind) < d0  # D is rewarded for larger real logits
    assert discriminator_loss(real, fake - 0.1, kind) < d0  # ... and for smaller fake logits
    assert generator_loss(fake + 0.1, kind) < g0  # G is rewarded when D rates its images as real
    r, f = real.clone().requires_grad_(), fake.clone().requires_grad_()
    discriminator_loss(r, f, kind).backward()
    assert (r.grad < 0).all() and (f.grad > 0).all()


def test_unknown_loss_kind_fails():
    with pytest.raises(ValueError, match="unknown GAN loss 'wgan'"):
        generator_loss(torch.zeros(1), "wgan")
    with pytest.raises(ValueError, match="unknown GAN loss"):
        discriminator_loss(torch.zeros(1), torch.zeros(1), "wasserstein")


# ---- R1 ------------------------------------------------------------------------------------------
def test_r1_is_half_the_squared_gradient_norm_of_a_linear_d():
    a = torch.tensor([1.0, -2.0, 2.0]).view(1, 3, 1, 1)
    real = torch.randn(4, 3, 1, 1, requires_grad=True)
    logits = (real * a).sum(dim=1)  # D(x) = a . x, ∇_x D = a, ||a||² = 9
    assert r1_penalty(logits, real).item() == pytest.approx(4.5)
    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty(logits, real.detach())


def test_r1_of_a_quadratic_d_and_that_it_trains_d():
    w = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    x = torch.tensor([[1.0, 1.0, 2.0], [0.0, 1.0, -2.0]], requires_grad=True)
    logits = (x @ w) ** 2  # ∇_x D = 2 (w·x) w, ||·||² = 4 (w·x)² ||w||², ||w||² = 5.25
    wx = [1.0 - 2.0 + 1.0, 0.0 - 2.0 - 1.0]
    want = 0.5 * sum(4 * v**2 * 5.25 for v in wx) / 2  # ½ E over the 2 samples
    penalty = r1_penalty(logits, x)
    assert penalty.item() == pytest.approx(want, rel=1e-6)
    penalty.backward()  # create_graph=True: the penalty has a gradient w.r.t. D's parameters
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_r1_gradient_reaches_d():
    w = torch.nn.Parameter(torch.tensor(2.0))
    real = torch.randn(3, 1, 2, 2, requires_grad=True)
    r1_penalty((w * real).sum(dim=(1, 2, 3)), real).backward()  # = ½ · 4 w² → d/dw = 4 w
    assert w.grad.item() == pytest.approx(8.0)


# ---- LeCam, adaptive weight, frozen ----------------------------------------------------------------
def test_lecam_penalty_and_anchor_update():
    ema_r, ema_f = torch.tensor(1.0), torch.tensor(-1.0)
    real, fake = torch.full((2, 1, 2, 2), -1.0), torch.full((2, 1, 2, 2), 1.0)
    assert lecam_penalty(real, fake, ema_r, ema_f).item() == 0.0
    assert lecam_penalty(real + 1, fake - 1, ema_r, ema_f).item() == pytest.approx(2.0)
    update_lecam_anchors(real, fake, ema_r, ema_f, decay=0.5)
    assert ema_r.item() == pytest.approx(0.0) and ema_f.item() == pytest.approx(0.0)


def _toy_layer():
    w = torch.nn.Parameter(torch.tensor([[1.0, 2.0]]))
    x = torch.tensor([[3.0], [4.0]])
    return w, (w @ x).sum()  # d/dw = x^T = [3, 4], norm 5


def test_adaptive_weight_ratio_of_gradient_norms():
    w, out = _toy_layer()
    lam = adaptive_weight(2.0 * out, 0.5 * out, w, eps=0.0)  # grad norms 10 and 2.5
    assert lam.item() == pytest.approx(4.0) and not lam.requires_grad
    w2, out2 = _toy_layer()
    nll, gan = 2.0 * out2, 0.5 * out2
    (nll + adaptive_weight(nll, gan, w2) * gan).backward()  # the graph was retained
    assert w2.grad is not None


def test_adaptive_weight_finite_when_gan_gradient_is_zero():
    w, out = _toy_layer()
    lam = adaptive_weight(2.0 * out, 0.0 * out, w, max_weight=1e4)  # reaches w, gradient exactly zero
    assert torch.isfinite(lam) and lam.item() == pytest.approx(1e4)
    unrelated = torch.tensor(1.0, requires_grad=True) * 3.0  # does not reach w at all
    lam = adaptive_weight(1e-6 * out, unrelated, w, max_weight=1e4)
    assert torch.isfinite(lam) and lam.item() == pytest.approx(5e-6 / 1e-4)


def test_frozen_blocks_gradients_to_d_and_restores_the_flags():
    d = nn.Linear(2, 1)
    d.bias.requires_grad_(False)
    x = torch.ones(1, 2, requires_grad=True)
    with frozen(d) as same:
        assert same is d and not any(p.requires_grad for p in d.parameters())
        d(x).sum().backward()
    assert x.grad is not None and d.weight.grad is None
    assert d.weight.requires_grad and not d.bias.requires_grad

"""Loss terms: signs, zeros and gradient directions; the adaptive weight; R1 and LeCam."""
import pytest
import torch

from autoencoders.losses import (
    adaptive_weight,
    discriminator_loss,
    generator_loss,
    kl_loss,
    lecam_penalty,
    r1_penalty,
    reconstruction_loss,
    update_lecam_anchors,
)


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_reconstruction_loss_sign_zero_and_gradient(kind):
    target = torch.rand(2, 3, 4, 4)
    assert reconstruction_loss(target, target, kind).item() == 0.0
    recon = (target + 0.5).requires_grad_(True)
    loss = reconstruction_loss(recon, target, kind)
    assert loss.item() == pytest.approx(0.5 if kind == "l1" else 0.25)
    loss.backward()
    assert (recon.grad > 0).all()  # too bright -> gradient descent darkens


def test_reconstruction_loss_errors():
    with pytest.raises(ValueError, match="shape"):
        reconstruction_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="huber"):
        reconstruction_loss(torch.zeros(1), torch.zeros(1), "huber")


def test_kl_loss_zero_at_prior_positive_elsewhere_and_gradient():
    zeros = torch.zeros(2, 4, 2, 2)
    assert kl_loss(zeros, zeros, image_elements=48).item() == 0.0
    mean = torch.full((2, 4, 2, 2), 0.5, requires_grad=True)
    logvar = torch.full((2, 4, 2, 2), -1.0, requires_grad=True)
    loss = kl_loss(mean, logvar, image_elements=48)
    # 1/2 (mu^2 + e^lv - 1 - lv) per element, 16 elements per image, / 48
    per_elem = 0.5 * (0.25 + torch.exp(torch.tensor(-1.0)) - 1 + 1)
    assert loss.item() == pytest.approx(per_elem.item() * 16 / 48, rel=1e-6)
    loss.backward()
    assert (mean.grad > 0).all()  # pulls the mean toward 0
    assert (logvar.grad < 0).all()  # pushes the variance up toward 1


def test_hinge_and_ns_discriminator_signs():
    confident_right = (torch.full((4, 1, 3, 3), 5.0), torch.full((4, 1, 3, 3), -5.0))
    confident_wrong = (torch.full((4, 1, 3, 3), -5.0), torch.full((4, 1, 3, 3), 5.0))
    assert discriminator_loss(*confident_right, "hinge").item() == 0.0
    assert discriminator_loss(*confident_wrong, "hinge").item() == pytest.approx(12.0)
    assert discriminator_loss(*confident_right, "non-saturating").item() < 0.02
    assert discriminator_loss(*confident_wrong, "non-saturating").item() > 9.0
    # At D = 0 everywhere: hinge 2, NS 2 ln 2.
    z = torch.zeros(2, 1, 2, 2)
    assert discriminator_loss(z, z, "hinge").item() == pytest.approx(2.0)
    assert discriminator_loss(z, z, "non-saturating").item() == pytest.approx(2 * 0.693147, rel=1e-5)


@pytest.mark.parametrize("kind", ["hinge", "non-saturating"])
def test_discriminator_gradients_raise_real_and_lower_fake(kind):
    real = torch.zeros(2, 1, 2, 2, requires_grad=True)
    fake = torch.zeros(2, 1, 2, 2, requires_grad=True)
    discriminator_loss(real, fake, kind).backward()
    assert (real.grad < 0).all() and (fake.grad > 0).all()


@pytest.mark.parametrize("kind", ["hinge", "non-saturating"])
def test_generator_loss_rewards_fooling_the_discriminator(kind):
    fake = torch.zeros(2, 1, 2, 2, requires_grad=True)
    generator_loss(fake, kind).backward()
    assert (fake.grad < 0).all()  # minimising raises D(fake)
    lo, hi = generator_loss(torch.full((1,), -2.0), kind), generator_loss(torch.full((1,), 2.0), kind)
    assert hi < lo


def test_unknown_gan_loss():
    with pytest.raises(ValueError, match="wgan"):
        generator_loss(torch.zeros(1), "wgan")


def _toy_layer():
    w = torch.nn.Parameter(torch.tensor([[1.0, 2.0]]))
    x = torch.tensor([[3.0], [4.0]])
    return w, (w @ x).sum()  # d/dw = x^T = [3, 4], norm 5


def test_adaptive_weight_ratio_of_gradient_norms():
    w, out = _toy_layer()
    nll = 2.0 * out  # grad norm 10
    gan = 0.5 * out  # grad norm 2.5
    lam = adaptive_weight(nll, gan, w, eps=0.0)
    assert lam.item() == pytest.approx(4.0)
    assert not lam.requires_grad
    (nll + lam * gan).backward()  # graph was retained
    assert w.grad is not None


def test_adaptive_weight_finite_when_gan_gradient_is_zero():
    w, out = _toy_layer()
    zero_gan = 0.0 * out  # reaches w, gradient exactly zero
    lam = adaptive_weight(2.0 * out, zero_gan, w, max_weight=1e4)
    assert torch.isfinite(lam) and lam.item() == pytest.approx(1e4)
    unrelated = torch.tensor(1.0, requires_grad=True) * 3.0  # does not reach w at all
    lam = adaptive_weight(1e-6 * out, unrelated, w, max_weight=1e4)
    assert torch.isfinite(lam) and lam.item() == pytest.approx(5e-6 / 1e-4)


def test_r1_penalty_matches_closed_form():
    a = torch.tensor([1.0, -2.0, 2.0]).view(1, 3, 1, 1)
    real = torch.randn(4, 3, 1, 1, requires_grad=True)
    logits = (real * a).sum(dim=1)  # D(x) = a . x, grad = a, ||a||^2 = 9
    assert r1_penalty(logits, real).item() == pytest.approx(4.5)
    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty(logits, real.detach())


def test_r1_penalty_trains_the_discriminator():
    w = torch.nn.Parameter(torch.tensor(2.0))
    real = torch.randn(3, 1, 2, 2, requires_grad=True)
    r1_penalty((w * real).sum(dim=(1, 2, 3)), real).backward()  # = 1/2 * 4 w^2 -> d/dw = 4 w
    assert w.grad.item() == pytest.approx(8.0)


def test_lecam_penalty_and_anchor_update():
    ema_r, ema_f = torch.tensor(1.0), torch.tensor(-1.0)
    real, fake = torch.full((2, 1, 2, 2), -1.0), torch.full((2, 1, 2, 2), 1.0)
    assert lecam_penalty(real, fake, ema_r, ema_f).item() == 0.0
    assert lecam_penalty(real + 1, fake - 1, ema_r, ema_f).item() == pytest.approx(2.0)
    update_lecam_anchors(real, fake, ema_r, ema_f, decay=0.5)
    assert ema_r.item() == pytest.approx(0.0) and ema_f.item() == pytest.approx(0.0)

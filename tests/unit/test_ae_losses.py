"""Reconstruction and KL terms: signs, zeros and gradient directions (the adversarial terms:
test_adversarial.py)."""
import pytest
import torch

from autoencoders.losses import kl_loss, reconstruction_loss


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

"""PatchGAN discriminator: output patch grid, norms, input checks."""
import pytest
import torch

from autoencoders.config import DiscriminatorConfig
from autoencoders.discriminator import PatchDiscriminator


@pytest.mark.parametrize("n_layers, size, out", [(1, 16, 6), (2, 32, 6), (3, 32, 2)])
def test_patch_grid_size(n_layers, size, out):
    d = PatchDiscriminator(DiscriminatorConfig(channels=8, n_layers=n_layers), in_channels=3)
    assert d(torch.randn(2, 3, size, size)).shape == (2, 1, out, out)  # H / 2^n - 2


@pytest.mark.parametrize("norm, cls", [("group", torch.nn.GroupNorm), ("batch", torch.nn.BatchNorm2d), ("none", None)])
def test_norm_choice(norm, cls):
    d = PatchDiscriminator(DiscriminatorConfig(channels=8, n_layers=2, norm=norm), in_channels=1)
    kinds = {type(m) for m in d.modules()}
    if cls is None:
        assert not kinds & {torch.nn.GroupNorm, torch.nn.BatchNorm2d}
    else:
        assert cls in kinds
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    d(x).mean().backward()
    assert x.grad.abs().sum() > 0


def test_input_errors():
    d = PatchDiscriminator(DiscriminatorConfig(channels=8, n_layers=3), in_channels=3)
    with pytest.raises(ValueError, match="too small"):
        d(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        d(torch.randn(1, 1, 32, 32))


def test_lecam_anchors_are_checkpointed_buffers():
    d = PatchDiscriminator(DiscriminatorConfig(channels=8, n_layers=1), in_channels=3)
    assert {"lecam_real", "lecam_fake"} <= set(d.state_dict())

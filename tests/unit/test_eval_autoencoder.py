"""eval_autoencoder: PSNR / SSIM / EfficientNet FD / codebook usage on tiny models."""
import math

import pytest
import torch
from torch import nn

from autoencoders.config import AutoencoderConfig, QuantizerConfig
from autoencoders.factory import build_autoencoder
from ldm_system.data.stream_worker import Batch
from ldm_system.eval.autoencoder import METRIC_LABELS, eval_autoencoder
from ldm_system.eval.features import EffNetLite0Features

CFG = AutoencoderConfig(kind="kl", channels=(8, 16, 16), f=4, latent_channels=3, layers_per_block=1, norm_groups=8)


@pytest.fixture(scope="module")
def features():
    return EffNetLite0Features(resize=64)


class Identity(nn.Module):
    """A perfect 'autoencoder'."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, x, sample_posterior=True):
        return {"recon": x}


def batches(n=2, bs=3):
    g = torch.Generator().manual_seed(0)
    return [Batch(torch.rand(bs, 3, 16, 16, generator=g) * 2 - 1, torch.zeros(bs), [""] * bs, [""] * bs) for _ in range(n)]


def test_perfect_reconstruction(features):
    r = eval_autoencoder(Identity(), batches(), features=features)
    assert r["num_images"] == 6.0
    assert r["psnr"] > 100 and r["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert r["fd_effnet_lite0"] == pytest.approx(0.0, abs=1e-6)
    assert "not comparable to Inception" in METRIC_LABELS["fd_effnet_lite0"]


def test_kl_model_report(features):
    ae = build_autoencoder(CFG)
    r = eval_autoencoder(ae, batches(), features=features, max_batches=1)
    assert r["num_images"] == 3.0
    assert math.isfinite(r["psnr"]) and -1.0 <= r["ssim"] <= 1.0 and r["fd_effnet_lite0"] > 0
    assert "codebook_usage" not in r
    assert ae.training  # mode restored


def test_vq_model_reports_codebook_usage_without_changing_state():
    cfg = AutoencoderConfig(kind="vq", channels=(8, 16, 16), f=4, latent_channels=3, layers_per_block=1,
                            norm_groups=8, quantizer=QuantizerConfig(codebook_size=16, ema=True, restart_after=1))
    ae = build_autoencoder(cfg)
    state = {k: v.clone() for k, v in ae.state_dict().items()}
    r = eval_autoencoder(ae, batches(), use_features=False)
    assert 0.0 < r["codebook_usage"] <= 1.0 and r["codebook_perplexity"] >= 1.0
    assert "fd_effnet_lite0" not in r
    assert all(torch.equal(state[k], v) for k, v in ae.state_dict().items())


def test_empty_input_is_an_error():
    with pytest.raises(ValueError, match="no batches"):
        eval_autoencoder(Identity(), [], use_features=False)

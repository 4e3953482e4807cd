"""`ldm report`'s LDM generator, built from the export folder below the serving layer, draws exactly
what the serving pipeline draws for the same seed, classes and guidance."""
from __future__ import annotations

import pytest
import torch

from ldm_system.eval.ldm_generator import LDMGenerator
from ldm_system.eval.protocols import GenerativeModel, LikelihoodModel


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_matches_the_pipeline(serving_model_dir, serving_pipe, guidance):
    gen = LDMGenerator(serving_model_dir, steps=5, guidance=guidance)
    assert isinstance(gen, GenerativeModel) and not isinstance(gen, LikelihoodModel)
    assert gen.image_shape == (serving_pipe.image_channels, serving_pipe.image_size, serving_pipe.image_size)
    k = serving_pipe.net.cfg.num_classes if serving_pipe.net.cfg.conditioning == "class" else 0
    classes = [i % k for i in range(6)] if k else None
    want = serving_pipe.sample(6, classes=classes, steps=5, guidance=guidance, seed=3)
    assert torch.equal(gen.sample(6, seed=3), want)


def test_reconstruction_psnr_is_the_autoencoders_ceiling(serving_model_dir, serving_pipe):
    """The report's stage-1 ceiling: test images through the export's autoencoder (posterior mode)."""
    from ldm_system.eval.metrics import psnr

    gen = LDMGenerator(serving_model_dir, steps=2)
    x = serving_pipe.sample(4, steps=2, seed=0)  # any images of the model's shape
    ae = gen.model.codec.ae
    want = psnr((ae.decode(ae.encode_latents(x, sample=False)).clamp(-1, 1) + 1) / 2, (x + 1) / 2).mean()
    got = gen.reconstruction_psnr(x)
    assert got == pytest.approx(float(want), abs=1e-4) and 5.0 < got < 100.0
    assert gen.reconstruction_psnr(x) == got  # the mode, not a sample: the same every time

"""KL and VQ autoencoders: encode/decode shapes, the shared interface, input errors, latent scale."""
import math
from types import SimpleNamespace

import pytest
import torch

from autoencoders.config import AutoencoderConfig, QuantizerConfig
from autoencoders.factory import build_autoencoder, measure_latent_scale
from autoencoders.kl import KLAutoencoder
from autoencoders.vq import VQAutoencoder


CHANNELS = {4: (8, 16, 16), 8: (8, 16, 16, 16)}


def tiny(kind: str, f: int, in_channels: int, latent: int = 3) -> AutoencoderConfig:
    return AutoencoderConfig(
        kind=kind, in_channels=in_channels, channels=CHANNELS[f], f=f, latent_channels=latent,
        layers_per_block=1, norm_groups=8, quantizer=QuantizerConfig(codebook_size=32),
    )


@pytest.mark.parametrize("f", [4, 8])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_kl_encode_decode_shapes(f, in_channels):
    ae = build_autoencoder(tiny("kl", f, in_channels, latent=4))
    assert isinstance(ae, KLAutoencoder) and ae.cfg.f == f
    x = torch.rand(2, in_channels, 16, 24) * 2 - 1
    posterior = ae.encode(x)
    assert posterior.mean.shape == posterior.logvar.shape == (2, 4, 16 // f, 24 // f)
    z = posterior.sample()
    assert z.shape == (2, 4, 16 // f, 24 // f)
    assert torch.equal(posterior.mode(), posterior.mean)
    assert torch.equal(ae.encode_latents(x, sample=False), posterior.mean)
    assert ae.decode(z).shape == x.shape
    out = ae(x)
    assert out["recon"].shape == x.shape and out["latents"].shape == z.shape


@pytest.mark.parametrize("f", [4, 8])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_vq_encode_decode_shapes(f, in_channels):
    ae = build_autoencoder(tiny("vq", f, in_channels))
    assert isinstance(ae, VQAutoencoder)
    x = torch.rand(2, in_channels, 16, 16) * 2 - 1
    h = ae.encode_latents(x)
    assert h.shape == (2, 3, 16 // f, 16 // f)
    assert ae.decode(h).shape == x.shape
    out = ae(x)
    assert out["recon"].shape == x.shape
    assert out["indices"].shape == (2, 16 // f, 16 // f)
    assert out["indices"].max() < 32


def test_vq_decode_quantizes_latents():
    ae = build_autoencoder(tiny("vq", 4, 3)).eval()
    h = torch.randn(1, 3, 4, 4)
    idx = ae.quantizer(h)["indices"]
    snapped = ae.quantizer.lookup(idx).permute(0, 3, 1, 2)
    # decode(h) quantizes first, so it equals decoding the nearest codes without quantization.
    assert torch.allclose(ae.decode(h), ae.decode(snapped, quantize=False), atol=1e-5)


def test_last_layer_is_decoder_output_conv():
    for kind in ("kl", "vq"):
        ae = build_autoencoder(tiny(kind, 4, 3))
        assert ae.last_layer_weight.shape == (3, 8, 3, 3)
        assert ae.last_layer_weight.requires_grad


def test_bad_inputs_raise_clear_errors():
    ae = build_autoencoder(tiny("kl", 4, 3))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        ae(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        ae(torch.zeros(1, 3, 18, 16))
    with pytest.raises(ValueError, match="latents"):
        ae.decode(torch.zeros(1, 5, 4, 4))
    with pytest.raises(ValueError, match="model.kind='vq'"):
        VQAutoencoder(tiny("kl", 4, 3))


def test_measure_latent_scale_is_inverse_std():
    ae = build_autoencoder(tiny("kl", 4, 3))
    batches = [torch.rand(2, 3, 16, 16) * 2 - 1 for _ in range(3)]
    scale = measure_latent_scale(ae, (SimpleNamespace(images=b) for b in batches), max_batches=2, sample=False)
    with torch.no_grad():
        z = torch.cat([ae.encode_latents(b) for b in batches[:2]]).double()
    assert math.isclose(scale, 1.0 / z.std().item(), rel_tol=1e-6)
    assert ae.training  # mode restored
    # Scaled latents have unit variance on the measured sample.
    assert math.isclose((z * scale).std().item(), 1.0, rel_tol=1e-6)


def test_measure_latent_scale_vq_and_errors():
    ae = build_autoencoder(tiny("vq", 4, 3))
    assert measure_latent_scale(ae, [torch.rand(2, 3, 16, 16)], max_batches=5) > 0
    with pytest.raises(ValueError, match="no images"):
        measure_latent_scale(ae, [], max_batches=5)
    with pytest.raises(ValueError, match="max_batches"):
        measure_latent_scale(ae, [], max_batches=0)


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_gradient_checkpointing_gives_the_same_gradients(kind):
    torch.manual_seed(0)
    ae = build_autoencoder(tiny(kind, 4, 3))
    x = torch.rand(2, 3, 16, 16) * 2 - 1

    def grads():
        ae.zero_grad()
        torch.manual_seed(1)  # same posterior sample
        ae(x)["recon"].square().mean().backward()
        return [p.grad.clone() for p in ae.parameters() if p.grad is not None]

    plain = grads()
    ae.enable_gradient_checkpointing()
    parts = (ae.vae.encoder, ae.vae.decoder) if kind == "kl" else (ae.encoder, ae.decoder)
    assert all(m.gradient_checkpointing for m in parts)
    checkpointed = grads()
    assert len(plain) == len(checkpointed)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(plain, checkpointed))

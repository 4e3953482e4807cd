"""Autoencoder checkpoints: save -> load round trip with the latent scale, diffusers export, and
clear errors for checkpoints of another model or config."""
import dataclasses
import json

import pytest
import torch

from autoencoders.config import AutoencoderConfig, QuantizerConfig
from autoencoders.factory import build_autoencoder, measure_latent_scale
from autoencoders.io import (
    META_FILE,
    CheckpointMismatchError,
    export_diffusers,
    load_autoencoder,
    load_state_into,
    read_meta,
    save_autoencoder,
)

KL = AutoencoderConfig(kind="kl", channels=(8, 16, 16), f=4, latent_channels=3, layers_per_block=1, norm_groups=8)
VQ = dataclasses.replace(KL, kind="vq", quantizer=QuantizerConfig(codebook_size=16, ema=True, restart_after=3))


def test_kl_roundtrip_keeps_weights_and_latent_scale(tmp_path):
    ae = build_autoencoder(KL)
    images = [torch.rand(2, 3, 16, 16) * 2 - 1]
    scale = measure_latent_scale(ae, images)
    save_autoencoder(ae, KL, scale, tmp_path / "ae")
    loaded, meta = load_autoencoder(tmp_path / "ae")
    assert meta.latent_scale == scale and meta.kind == "kl" and meta.config == KL
    assert not loaded.training
    z = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(ae.eval().decode(z), loaded.decode(z))
    assert json.loads((tmp_path / "ae" / META_FILE).read_text())["latent_scale"] == scale


def test_vq_roundtrip_keeps_quantizer_buffers(tmp_path):
    ae = build_autoencoder(VQ).train()
    ae(torch.rand(2, 3, 16, 16) * 2 - 1)  # training forward: EMA, ages, pool, step change
    assert ae.quantizer.step.item() == 1
    save_autoencoder(ae, VQ, 0.5, tmp_path)
    loaded, meta = load_autoencoder(tmp_path, expected=VQ)
    for key, value in ae.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert meta.config.quantizer.ema


def test_expected_config_mismatch_lists_fields(tmp_path):
    save_autoencoder(build_autoencoder(KL), KL, 1.0, tmp_path)
    other = dataclasses.replace(KL, latent_channels=4)
    with pytest.raises(CheckpointMismatchError, match="latent_channels: checkpoint 3 vs model 4"):
        load_autoencoder(tmp_path, expected=other)


def test_loading_into_another_architecture_lists_keys_and_shapes(tmp_path):
    save_autoencoder(build_autoencoder(KL), KL, 1.0, tmp_path)
    wider = build_autoencoder(dataclasses.replace(KL, latent_channels=4))
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches.*vae\.decoder\.conv_in\.weight"):
        load_state_into(wider, tmp_path)
    vq = build_autoencoder(VQ)
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_into(vq, tmp_path)
    assert "top-level modules differ: checkpoint ['vae']" in str(err.value) and "'quantizer'" in str(err.value)
    assert "missing keys" in str(err.value) and "decoder.conv_in.weight" in str(err.value)
    assert "unexpected keys" in str(err.value) and "vae.decoder.conv_in.weight" in str(err.value)


def test_bad_metadata_and_arguments(tmp_path):
    ae = build_autoencoder(KL)
    with pytest.raises(ValueError, match="latent_scale"):
        save_autoencoder(ae, KL, float("nan"), tmp_path)
    with pytest.raises(ValueError, match="latent_scale"):
        save_autoencoder(ae, KL, -1.0, tmp_path)
    with pytest.raises(CheckpointMismatchError, match="cfg differs"):
        save_autoencoder(ae, VQ, 1.0, tmp_path)
    with pytest.raises(FileNotFoundError, match=META_FILE):
        read_meta(tmp_path / "nowhere")
    save_autoencoder(ae, KL, 1.0, tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    meta["config"]["depth"] = 3
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointMismatchError, match="unknown model config keys"):
        read_meta(tmp_path)


def test_diffusers_export_loads_with_from_pretrained(tmp_path):
    from diffusers import AutoencoderKL

    ae = build_autoencoder(KL).eval()
    export_diffusers(ae, 0.37, tmp_path / "diffusers")
    vae = AutoencoderKL.from_pretrained(str(tmp_path / "diffusers")).eval()
    assert vae.config.scaling_factor == pytest.approx(0.37)
    assert ae.vae.config.scaling_factor == 1.0  # the in-memory model is not changed
    z = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        assert torch.allclose(vae.decode(z).sample, ae.decode(z), atol=1e-6)
        x = torch.rand(1, 3, 16, 16) * 2 - 1
        assert torch.allclose(vae.encode(x).latent_dist.mean, ae.encode(x).mean, atol=1e-6)


def test_vq_export_is_refused_clearly(tmp_path):
    with pytest.raises(NotImplementedError, match="KL autoencoders only"):
        export_diffusers(build_autoencoder(VQ), 1.0, tmp_path)

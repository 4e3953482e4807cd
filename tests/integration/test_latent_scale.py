"""The latent scale is measured on what stage 2 trains on (the posterior mode, or samples with
data.sample_posterior), for our under-trained autoencoder and for diffusers VAEs whose config names
no scale (or diffusers' default, which does not fit them); stage 2 checks the std of its first batches."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from diffusers_folders import build_vae_folder
from ldm_fixtures import LDM_DEBUG, build_debug_latents
from ldm_system.config import load_config
from ldm_system.data.encode import encode_shards
from ldm_system.data.manifest import read_manifest
from ldm_system.train.runs import LDMRunConfig, run_ldm


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """An autoencoder after 2 steps of stage 1 (its posterior variance dwarfs the spread of its means)
    and Fashion-MNIST latents encoded with it."""
    root = tmp_path_factory.mktemp("scale")
    return root, build_debug_latents(root, num_images=128)


def _stage2_std(latents, out, *extra):
    cfg = load_config(LDMRunConfig, LDM_DEBUG, [f"data.shards={latents}", f"train.out_dir={out}", "train.steps=8",
                                                "data.batch_size=8", "train.checkpoint.every=0", "preview.num_images=1",
                                                "preview.steps=1", *extra])
    tr = run_ldm(cfg)
    tr.close()
    return tr.task.scale_check.std, tr.task.codec.scale


def test_an_under_trained_autoencoder_stores_mode_and_sample_scales_and_stage2_uses_the_matching_one(data, tmp_path):
    root, latents = data
    ae = json.loads((root / "ae" / "autoencoder" / "autoencoder.json").read_text())
    mode, sample = ae["latent_scale"], ae["sample_latent_scale"]
    assert mode > 1.3 * sample  # the samples spread far wider than the means
    meta = read_manifest(latents).meta
    assert meta["latent_scale"] == mode and meta["sample_latent_scale"] == sample
    std, scale = _stage2_std(latents, tmp_path / "mode")
    assert scale == mode and 0.85 < std < 1.15  # latent.npy (the mode) at unit std
    std, scale = _stage2_std(latents, tmp_path / "sample", "data.sample_posterior=true")
    assert scale == sample and 0.85 < std < 1.15  # posterior samples at unit std, rescaled from the shards
    from ldm_system.serving.export import export_checkpoint

    export = export_checkpoint(tmp_path / "sample", tmp_path / "export")
    from ldm_system.artifacts.exported import load_exported_ldm

    assert load_exported_ldm(export).codec.scale == sample  # the export knows the run's scale


def test_latents_off_unit_std_warn_at_the_start_of_stage2(data, tmp_path, caplog):
    import shutil

    root, latents = data
    off = tmp_path / "off"
    shutil.copytree(latents, off)
    manifest = json.loads((off / "manifest.json").read_text())
    manifest["meta"]["sample_latent_scale"] = manifest["meta"]["latent_scale"] * 3  # as if measured on other latents
    (off / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="ldm_system"):
        std, _ = _stage2_std(off, tmp_path / "run", "data.sample_posterior=true")
    assert std > 1.25
    assert any("have std" in r.message and "over the first 8 batches" in r.message for r in caplog.records)


def test_a_diffusers_vae_without_scaling_factor_gets_its_scales_measured_on_encode(data, tmp_path):
    from ldm_system.data.pack import pack

    images = tmp_path / "images"
    pack("builtin:fashion-mnist", images, image_size=16, split="test", limit=64, shard_size=32)
    vae = build_vae_folder(tmp_path / "vae", latent_channels=3, scaling_factor=None)
    encode_shards(vae, images, tmp_path / "lat", batch_size=16, progress=False)
    meta = read_manifest(tmp_path / "lat").meta
    assert meta["latent_scale_measured"] and meta["sample_latent_scale"] < meta["latent_scale"]
    std, scale = _stage2_std(tmp_path / "lat", tmp_path / "run", "unet.sample_size=8")
    assert scale == meta["latent_scale"] and 0.85 < std < 1.15


def test_diffusers_default_scaling_factor_is_replaced_when_it_does_not_fit(tmp_path, caplog):
    from ldm_system.data.pack import pack

    images = tmp_path / "images"
    pack("builtin:fashion-mnist", images, image_size=16, split="test", limit=32, shard_size=32)
    default = build_vae_folder(tmp_path / "default", latent_channels=3, scaling_factor=0.18215)
    with caplog.at_level(logging.WARNING, logger="ldm_system"):
        encode_shards(default, images, tmp_path / "lat", batch_size=16, progress=False)
    meta = read_manifest(tmp_path / "lat").meta
    assert meta["latent_scale_measured"] and meta["latent_scale"] != pytest.approx(0.18215)
    assert any("diffusers' default" in r.message for r in caplog.records)
    chosen = build_vae_folder(tmp_path / "chosen", latent_channels=3, scaling_factor=0.5)  # a deliberate value stays
    encode_shards(chosen, images, tmp_path / "lat2", batch_size=16, progress=False)
    kept = read_manifest(tmp_path / "lat2").meta
    assert kept["latent_scale"] == 0.5 and not kept["latent_scale_measured"] and "sample_latent_scale" not in kept


def test_measure_latent_scales_on_one_pass():
    from autoencoders.config import PRESETS
    from autoencoders.factory import build_autoencoder, measure_latent_scale, measure_latent_scales

    torch.manual_seed(0)
    ae = build_autoencoder(PRESETS["kl-f4-debug"]().model)
    x = [torch.rand(4, ae.cfg.in_channels, 16, 16) * 2 - 1 for _ in range(2)]
    scales = measure_latent_scales(ae, x, max_batches=2)
    with torch.no_grad():
        mode = torch.cat([ae.encode_latents(b) for b in x]).double()
    assert scales["mode"] == pytest.approx(1 / mode.std().item(), rel=1e-6)
    assert measure_latent_scale(ae, x, max_batches=2, sample=False) == pytest.approx(scales["mode"])
    assert scales["sample"] < scales["mode"]  # random init: posterior std ~1 dwarfs the means

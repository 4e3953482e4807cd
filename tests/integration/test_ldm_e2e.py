"""End to end on real Fashion-MNIST with the debug configs: stage 1 → latent shards → 20 LDM steps →
export → diffusers loads the folder and computes what our pipeline computes. Plus fine-tuning
(--init-from with another class count), refused mismatches and the other two data paths
(online encoding, pixel space)."""
from __future__ import annotations

import pytest
import torch

from ldm_fixtures import LDM_DEBUG, build_debug_latents
from ldm_system.config import load_config
from ldm_system.train.runs import LDMRunConfig, run_ldm


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    return root, build_debug_latents(root)


def _cfg(shards, out, *extra):
    return load_config(LDMRunConfig, LDM_DEBUG, [f"data.shards={shards}", f"train.out_dir={out}", "data.batch_size=4",
                                                 "train.checkpoint.every=0", "preview.num_images=2", "preview.steps=2", *extra])


@pytest.fixture(scope="module")
def exported(data):
    from ldm_system.serving.export import export_checkpoint

    root, lat = data
    tr = run_ldm(_cfg(lat, root / "ldm", "train.steps=20"))
    assert tr.step == 20
    return export_checkpoint(root / "ldm", root / "model")


def test_diffusers_loads_the_export(exported):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DModel

    from ldm_system.serving.pipeline import LDMPipeline

    unet = UNet2DModel.from_pretrained(str(exported / "unet"))
    vae = AutoencoderKL.from_pretrained(str(exported / "vae"))
    sched = DDIMScheduler.from_pretrained(str(exported / "scheduler"))
    pipe = LDMPipeline.from_pretrained(exported)
    assert vae.config.scaling_factor == pytest.approx(pipe.codec.scale)
    assert sched.config.num_train_timesteps == 1000 and sched.config.beta_schedule == "scaled_linear"

    # the same latent denoising in diffusers' own loop and ours
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([3, 7])
    sched.set_timesteps(5)
    z = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            z = sched.step(unet(z, t, class_labels=labels).sample, t, z).prev_sample
        images_diffusers = vae.decode(z / vae.config.scaling_factor).sample.clamp(-1, 1)
    from ldm_system.diffusion.loop import sample

    s = pipe._sampler("ddim", 5)
    with torch.no_grad():
        ours = pipe.codec.decode(sample(pipe.model_fn, s, x.shape, num_steps=5, cond=labels, x_T=x)).clamp(-1, 1)
    torch.testing.assert_close(ours, images_diffusers, rtol=1e-4, atol=1e-4)
    assert pipe.classes[9] == "Ankle boot"


def test_export_of_a_run_on_posterior_samples_carries_the_samples_scale(data):
    """A run trained on posterior samples (data.sample_posterior) used the samples' scale; the export's
    vae/ scaling_factor must be that one, or stock diffusers decodes with the mode's scale."""
    import json

    from diffusers import AutoencoderKL

    from autoencoders.io import read_meta
    from ldm_system.serving.export import export_checkpoint
    from ldm_system.serving.pipeline import LDMPipeline

    root, lat = data
    run_ldm(_cfg(lat, root / "ldm_samples", "train.steps=2", "data.sample_posterior=true"))
    out = export_checkpoint(root / "ldm_samples", root / "model_samples")
    meta = json.loads((out / "ldm.json").read_text())
    ae = read_meta(out / "autoencoder")
    assert ae.sample_latent_scale is not None and abs(ae.sample_latent_scale - ae.latent_scale) > 0.1  # they differ
    assert meta["latent_scale"] == pytest.approx(ae.sample_latent_scale)
    vae = AutoencoderKL.from_pretrained(str(out / "vae"))
    assert vae.config.scaling_factor == pytest.approx(meta["latent_scale"])
    assert LDMPipeline.from_pretrained(out).codec.scale == pytest.approx(meta["latent_scale"])


def test_finetune_resizes_class_table(data, exported):
    from safetensors.torch import load_file

    from ldm_system.train.finetune import load_init_unet

    root, lat = data
    cfg = _cfg(lat, root / "ft", "train.steps=2", "unet.num_classes=12")
    old = load_file(str(exported / "unet" / "diffusion_pytorch_model.safetensors"))
    new = load_init_unet(str(exported), cfg.unet).state_dict()
    assert new["class_embedding.weight"].shape[0] == 13  # 12 classes + null
    torch.testing.assert_close(new["class_embedding.weight"][:10], old["class_embedding.weight"][:10])
    torch.testing.assert_close(new["class_embedding.weight"][12], old["class_embedding.weight"][10])  # null row
    torch.testing.assert_close(new["conv_in.weight"], old["conv_in.weight"])
    tr = run_ldm(cfg, init_from=str(exported))  # and it trains from there
    assert tr.step == 2


def test_init_from_other_model_lists_mismatches(data, exported):
    from ldm_system.train.finetune import IncompatibleCheckpointError

    root, lat = data
    with pytest.raises(IncompatibleCheckpointError, match=r"conv_in.weight: checkpoint \(32, 3, 3, 3\) vs model \(48, 3, 3, 3\)"):
        run_ldm(_cfg(lat, root / "bad", "train.steps=1", "unet.block_out_channels=[48, 64]"), init_from=str(exported))


def test_unet_that_does_not_fit_the_data_is_refused(data):
    root, lat = data
    # sample_size is the base size (buckets train other shapes); channels must match
    with pytest.raises(ValueError, match="unet.in_channels=4 but the data has 3 channels"):
        run_ldm(_cfg(lat, root / "bad2", "train.steps=1", "unet.in_channels=4"))


def test_online_encoding_and_pixel_space(data):
    root, _ = data
    images, ae = root / "images", root / "ae" / "autoencoder"
    tr = run_ldm(_cfg(images, root / "online", "train.steps=2", f"autoencoder={ae}"))
    assert tr.task.input_kind == "image" and not tr.task.codec.is_identity
    tr = run_ldm(_cfg(images, root / "pixels", "train.steps=2", "unet.in_channels=1", "unet.sample_size=32"))
    assert tr.task.codec.is_identity and tr.step == 2


def test_gradient_checkpointing_and_bf16_autocast_train(data):
    from accelerate.state import AcceleratorState

    root, lat = data
    AcceleratorState._reset_state(True)  # the process-wide state fixes mixed precision at first use
    tr = run_ldm(_cfg(lat, root / "gc", "train.steps=2", "train.gradient_checkpointing=true",
                      "train.mixed_precision=bf16"))
    assert tr.step == 2 and tr.raw["unet"].unet.is_gradient_checkpointing
    assert tr.task.codec.ae is not None and next(tr.task.codec.ae.parameters()).dtype == torch.float32
    AcceleratorState._reset_state(True)

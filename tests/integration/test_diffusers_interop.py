"""Both ways with diffusers, on tiny random folders built by diffusers' own classes in the test:
import (SD-style text pipeline, CompVis-LDM-style VQ + unconditional UNet, a bare class-conditional
UNet) → a few fine-tuning steps → `ldm export` → the stock diffusers pipeline draws what `ldm sample`
draws from the same noise, within 1e-4."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ldm_system.config import load_config
from ldm_system.train.runs import LDMRunConfig, run_ldm

STEPS, TOL = 5, 1e-4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Fashion-MNIST images at 16 px and three source folders made with diffusers' classes."""
    from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel, VQModel

    from diffusers_folders import TINY_AE, build_sd_folder
    from ldm_system.data.pack import pack
    from ldm_system.models.text import save_random_text_encoder

    root = tmp_path_factory.mktemp("interop")
    pack("builtin:fashion-mnist", root / "images", image_size=16, split="test", limit=32, shard_size=32)
    build_sd_folder(root / "sd", save_random_text_encoder(root / "clip", hidden_size=32, max_length=16))
    LDMPipeline(
        vqvae=VQModel(**TINY_AE, latent_channels=3, num_vq_embeddings=32, scaling_factor=1.3),
        unet=UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                         down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                         layers_per_block=1, attention_head_dim=8, norm_num_groups=8),
        scheduler=DDIMScheduler(clip_sample=False),
    ).save_pretrained(str(root / "compvis"))
    UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                layers_per_block=1, attention_head_dim=8, norm_num_groups=8, num_class_embeds=11,
                ).save_pretrained(str(root / "class_unet"))
    UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                layers_per_block=1, attention_head_dim=8, norm_num_groups=8).save_pretrained(str(root / "pixel_unet"))
    return root


def _encode(world, source, name):
    from ldm_system.data.encode import encode_shards

    out = world / name
    if not (out / "manifest.json").exists():
        encode_shards(world / source, world / "images", out, batch_size=32, shard_size=32, progress=False)
    return out


FINETUNE = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs" / "ldm" / "finetune.yaml"


def _finetune(world, latents, out, init_from, *extra):
    cfg = load_config(LDMRunConfig, FINETUNE, [f"data.shards={latents}", f"train.out_dir={world / out}", "data.batch_size=4",
                                           "data.num_workers=0", "train.steps=20", "train.checkpoint.every=20", "optim.lr=0.0005",
                                           "train.ema.module=unet", "train.log.progress=false", "preview.num_images=2",
                                           "preview.steps=2", *extra])
    run_ldm(cfg, init_from=str(init_from)).close()
    from ldm_system.serving.export import export_checkpoint

    return export_checkpoint(world / out, world / f"{out}-export")


def _ours(export, **kw):
    from ldm_system.serving.pipeline import LDMPipeline

    images = LDMPipeline.from_pretrained(export).sample(steps=STEPS, seed=0, **kw)
    return (images / 2 + 0.5).permute(0, 2, 3, 1).numpy()  # (B, H, W, C) in [0, 1], as output_type="np"


def _max_delta(a, b) -> float:
    d = float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())
    print(f"max |delta| = {d:.3g}")
    return d


def test_sd_style_text_folder_round_trip(world):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    export = _finetune(world, _encode(world, "sd/vae", "sd-latents"), "sd-run", world / "sd")
    meta = json.loads((export / "ldm.json").read_text())
    assert meta["diffusion"]["beta_schedule"] == "scaled-linear"  # from the folder's scheduler, not typed in
    assert meta["unet"]["num_attention_heads"] == [2, 2] and meta["diffusers_pipeline"] == "StableDiffusionPipeline"
    assert meta["text_encoder"]["max_length"] == 16  # capped by the text model's positions
    pipe = DiffusionPipeline.from_pretrained(str(export))
    assert isinstance(pipe, StableDiffusionPipeline) and pipe.scheduler.config.steps_offset == 1
    prompts = ["Sneaker", "Bag"]
    theirs = pipe(prompts, num_inference_steps=STEPS, guidance_scale=3.0, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert _max_delta(_ours(export, num=2, prompts=prompts, guidance=3.0), theirs) < TOL


def test_lora_fine_tune_of_an_sd_folder_exports_adapters_stock_diffusers_applies(world):
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    export = _finetune(world, _encode(world, "sd/vae", "sd-latents"), "lora-run", world / "sd", "lora.rank=4",
                       "lora.alpha=8", "optim.lr=0.01")
    assert json.loads((export / "ldm.json").read_text())["lora"]["adapter"] == "lora"
    base = UNet2DConditionModel.from_pretrained(str(world / "sd"), subfolder="unet")
    pipe = DiffusionPipeline.from_pretrained(str(export), unet=base)  # the untouched base UNet + our adapters
    prompts, gen = ["Sneaker", "Bag"], lambda: torch.Generator().manual_seed(0)
    kw = dict(num_inference_steps=STEPS, guidance_scale=3.0, output_type="np")
    without = pipe(prompts, generator=gen(), **kw).images
    pipe.load_lora_weights(str(export / "lora"))
    theirs = pipe(prompts, generator=gen(), **kw).images
    ours = _ours(export, num=2, prompts=prompts, guidance=3.0)  # unet/ holds the merged weights
    assert _max_delta(ours, theirs) < TOL
    assert _max_delta(ours, without) > 1e-3  # the adapters changed the model


def test_compvis_style_vq_folder_round_trip(world):
    from diffusers import DiffusionPipeline, LDMPipeline, VQModel

    export = _finetune(world, _encode(world, "compvis", "vq-latents"), "vq-run", world / "compvis")
    pipe = DiffusionPipeline.from_pretrained(str(export))
    assert isinstance(pipe, LDMPipeline) and isinstance(pipe.vqvae, VQModel)
    theirs = pipe(batch_size=2, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert _max_delta(_ours(export, num=2), theirs) < TOL


def test_class_conditional_unet_round_trip_through_the_shipped_pipeline(world):
    from diffusers import DiffusionPipeline

    export = _finetune(world, _encode(world, "sd/vae", "sd-latents"), "cls-run", world / "class_unet")
    assert (export / "pipeline.py").is_file()
    pipe = DiffusionPipeline.from_pretrained(str(export), custom_pipeline=str(export), trust_remote_code=True)
    theirs = pipe(class_labels=[0, 3], guidance_scale=2.0, num_inference_steps=STEPS,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    assert _max_delta(_ours(export, num=2, classes=[0, 3], guidance=2.0), theirs) < TOL


def test_pixel_space_unet_round_trip_as_ddim_pipeline(world):
    from diffusers import DDIMPipeline, DiffusionPipeline

    export = _finetune(world, world / "images", "px-run", world / "pixel_unet")
    pipe = DiffusionPipeline.from_pretrained(str(export))
    assert isinstance(pipe, DDIMPipeline)
    theirs = pipe(batch_size=2, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert _max_delta(_ours(export, num=2), theirs) < TOL


def test_vae_whose_channels_do_not_fit_the_unet_is_refused(world):
    with pytest.raises(ValueError, match="unet.in_channels=3 but the data has 4 channels"):
        _finetune(world, _encode(world, "sd/vae", "sd-latents"), "bad-run", world / "compvis" / "unet")


def test_a_vae_without_scaling_factor_gets_its_scale_measured_on_the_run_images(world):
    import shutil

    from autoencoders.io import load_autoencoder

    vae = world / "noscale-vae"
    if not vae.exists():
        shutil.copytree(world / "sd" / "vae", vae)
        cfg = json.loads((vae / "config.json").read_text())
        del cfg["scaling_factor"]
        (vae / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no scaling_factor and no images were given"):
        load_autoencoder(vae)
    export = _finetune(world, world / "images", "noscale-run", world / "class_unet", f"autoencoder={vae}")
    scale = json.loads((export / "ldm.json").read_text())["latent_scale"]
    assert scale != 0.7 and scale > 0  # measured, not the diffusers default
    assert json.loads((export / "vae" / "config.json").read_text())["scaling_factor"] == pytest.approx(scale)


def test_ldm_sample_takes_a_diffusers_pipeline_folder_as_model(world, tmp_path):
    from PIL import Image

    from ldm_system.cli import main

    out = tmp_path / "grid.png"
    assert main(["sample", "--model", str(world / "compvis"), "--num", "2", "--steps", "2", "--out", str(out),
                 "--no-progress"]) == 0
    assert Image.open(out).size[0] >= 16


def test_config_values_that_contradict_the_imported_folder_name_both(world):
    lat = _encode(world, "sd/vae", "sd-latents")
    with pytest.raises(ValueError, match=r"unet.cross_attention_dim: the config says 64, .*sd has 32"):
        _finetune(world, lat, "contra-run", world / "sd", "unet.cross_attention_dim=64")
    with pytest.raises(ValueError, match=r"diffusion.beta_schedule: the config says 'linear', .*scheduler has 'scaled-linear'"):
        _finetune(world, lat, "contra-run", world / "sd", "diffusion.beta_schedule=linear")

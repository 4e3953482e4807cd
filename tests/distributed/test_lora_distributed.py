"""LoRA fine-tuning of an imported Stable-Diffusion-style folder on 2 CPU processes, through
`accelerate launch` with the shipped config files: DDP (single_node.yaml) and ZeRO-2 (zero2.yaml).

For each: `ldm train --init-from SD` with `lora.rank=4`, 4 steps with a checkpoint at 2, a resume from
step 2 to 4 in a fresh launch, then
- only adapter weights changed: every base weight is bit-identical to the folder's UNet;
- the EMA holds the adapters and differs from the raw ones;
- the resumed run ends bit-identical to the uninterrupted one (weights and EMA);
- `ldm export` writes adapters that stock `pipe.load_lora_weights(...)` applies to the base pipeline,
  which then draws what our merged export draws.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusers_folders import build_sd_folder
from launch_utils import accelerate
from ldm_fixtures import ROOT

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

FINETUNE = ROOT / "configs" / "ldm" / "finetune.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from ldm_system.data.encode import encode_shards
    from ldm_system.data.pack import pack
    from ldm_system.models.text import save_random_text_encoder

    root = tmp_path_factory.mktemp("lora-dist")
    pack("builtin:fashion-mnist", root / "images", image_size=16, split="test", limit=32, shard_size=16)
    build_sd_folder(root / "sd", save_random_text_encoder(root / "clip", hidden_size=32, max_length=16))
    encode_shards(root / "sd", root / "images", root / "latents", batch_size=16, shard_size=16, progress=False)
    return root


def _train(world, out, mode, steps, resume=False):
    args = ["-m", "ldm_system.cli", "train", "--config", str(FINETUNE), "--init-from", str(world / "sd"),
            "--set", f"data.shards={world / 'latents'}", "--set", f"train.out_dir={out}", "--set", f"train.steps={steps}",
            "--set", "data.batch_size=4", "--set", "data.num_workers=0", "--set", "train.checkpoint.every=2",
            "--set", "train.log.progress=false", "--set", "optim.lr=0.01",
            "--set", "lora.rank=4", "--set", "lora.alpha=8", "--set", "preview.num_images=2", "--set", "preview.steps=2"]
    accelerate(args + (["--resume", "latest"] if resume else []), mode=f"file:launch/accelerate/{mode}.yaml")


def _weights(run, step, ema=False):
    return load_file(str(run / "checkpoints" / f"step_{step:08d}" / "weights" / f"unet{'.ema' if ema else ''}.safetensors"))


@pytest.mark.parametrize("mode", ["single_node", "zero2"])
def test_lora_under_ddp_and_zero2(world, mode, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    _train(world, full, mode, steps=4)
    _train(world, cut, mode, steps=2)
    shutil.rmtree(cut / "checkpoints" / "step_00000004", ignore_errors=True)
    _train(world, cut, mode, steps=4, resume=True)

    raw, ema = _weights(full, 4), _weights(full, 4, ema=True)
    base = load_file(str(world / "sd" / "unet" / "diffusion_pytorch_model.safetensors"))
    adapters = [k for k in raw if "lora_" in k]
    assert adapters and len(adapters) + len(base) == len(raw)
    for k, v in raw.items():  # "unet.<module>.base_layer.weight" ↔ the folder's "<module>.weight"
        if "lora_" not in k:
            assert torch.equal(v, base[k.removeprefix("unet.").replace(".base_layer", "")]), k
    assert any(not torch.equal(raw[k], _weights(full, 2)[k]) for k in adapters), "the adapters did not train"
    assert all(not torch.equal(ema[k], raw[k]) for k in adapters if "lora_B" in k)  # the EMA lags the adapters

    for ema_too in (False, True):  # resumed at step 2 == uninterrupted
        resumed, straight = _weights(cut, 4, ema_too), _weights(full, 4, ema_too)
        assert set(resumed) == set(straight)
        for k in straight:
            assert torch.equal(resumed[k], straight[k]), (ema_too, k)

    from diffusers import DiffusionPipeline, UNet2DConditionModel

    from ldm_system.serving.export import export_checkpoint

    export = export_checkpoint(full, tmp_path / "export", use_ema=False)
    merged = DiffusionPipeline.from_pretrained(str(export))  # unet/ holds the merged weights
    base_unet = UNet2DConditionModel.from_pretrained(str(world / "sd"), subfolder="unet")
    stock = DiffusionPipeline.from_pretrained(str(export), unet=base_unet)  # the untouched base UNet
    kw = dict(num_inference_steps=3, guidance_scale=2.0, output_type="np")
    before = stock(["Bag", "Sneaker"], generator=torch.Generator().manual_seed(0), **kw).images
    stock.load_lora_weights(str(export / "lora"))
    after = stock(["Bag", "Sneaker"], generator=torch.Generator().manual_seed(0), **kw).images
    ours = merged(["Bag", "Sneaker"], generator=torch.Generator().manual_seed(0), **kw).images
    assert np.abs(after - ours).max() < 1e-4
    assert np.abs(after - before).max() > 1e-4  # the adapters changed the model

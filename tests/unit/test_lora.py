"""LoRA on the diffusion UNet: only adapters train, a target that matches nothing is refused, merging
keeps the function."""
from __future__ import annotations

import pytest
import torch

from ldm_system.models.lora import LoRAConfig, add_lora, merge_lora, trainable_parameters
from ldm_system.models.unet import PRESETS, build_unet


def test_only_adapters_train_and_merging_keeps_the_function():
    torch.manual_seed(0)
    unet = build_unet(PRESETS["debug"])
    total = sum(p.numel() for p in unet.parameters())
    add_lora(unet, LoRAConfig(rank=4, alpha=8))
    n = trainable_parameters(unet)
    assert 0 < n < total // 20
    assert all("lora_" in name for name, p in unet.named_parameters() if p.requires_grad)
    for p in unet.parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([5, 700])
    with torch.no_grad():
        before = unet(x, t).sample
        after = merge_lora(unet)(x, t).sample
    assert not any("lora_" in k or "base_layer" in k for k in unet.state_dict())
    assert (before - after).abs().max().item() < 1e-5


def test_a_target_that_matches_no_module_is_refused_with_the_names_there_are():
    with pytest.raises(ValueError, match=r"lora.targets \['to_qkv'\] match no Linear/Conv2d module.*to_q"):
        add_lora(build_unet(PRESETS["debug"]), LoRAConfig(rank=2, targets=("to_q", "to_qkv")))


def test_diffusion_task_builds_a_frozen_unet_with_adapters():
    from ldm_system.diffusion.config import DiffusionConfig
    from ldm_system.models.latent import LatentCodec
    from ldm_system.train.diffusion_task import DiffusionTask, OptimConfig

    task = DiffusionTask(PRESETS["debug"], DiffusionConfig(), OptimConfig(), LatentCodec.identity(), "latent",
                         lora=LoRAConfig(rank=2))
    net = task.build()["unet"]
    opt = task.optimizers({"unet": net})["unet"]
    trained = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert trained == trainable_parameters(net) < sum(p.numel() for p in net.parameters()) // 20

"""Tiny random-weight diffusers folders built with diffusers' and transformers' own classes."""
from __future__ import annotations

from pathlib import Path

import torch


def _blocks(n: int, kind: str) -> tuple[str, ...]:
    return tuple(kind for _ in range(n))


# a 1-channel KL/VQ encoder-decoder at f = 2 (16 px images → 8x8 latents)
TINY_AE = dict(in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=8, layers_per_block=1,
               down_block_types=_blocks(2, "DownEncoderBlock2D"), up_block_types=_blocks(2, "UpDecoderBlock2D"))


def build_sd_folder(out: Path, clip_dir: Path, seed: int = 0, scaling_factor: float = 0.7) -> Path:
    """A Stable-Diffusion-style pipeline folder (vae/ unet/ text_encoder/ tokenizer/ scheduler/): 4 latent
    channels, a text UNet with SD-1.x attention (a fixed head count of 2) and the random CLIP at `clip_dir`
    (`save_random_text_encoder`, hidden size 32)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                          clip_sample=False, set_alpha_to_one=False)
    StableDiffusionPipeline(
        vae=AutoencoderKL(**TINY_AE, latent_channels=4, scaling_factor=scaling_factor),
        text_encoder=CLIPTextModel.from_pretrained(str(clip_dir / "text_encoder")),
        tokenizer=CLIPTokenizer.from_pretrained(str(clip_dir / "tokenizer")),  # model_max_length stays huge: import caps it
        unet=UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                  cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8),  # 2 heads (SD-1.x)
        scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(str(out))
    return out


def build_vae_folder(out: Path, seed: int = 0, latent_channels: int = 4, scaling_factor: float | None = None) -> Path:
    """A bare `AutoencoderKL` folder; `scaling_factor=None` leaves the key out of config.json."""
    import json

    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(**TINY_AE, latent_channels=latent_channels, scaling_factor=scaling_factor or 1.0).save_pretrained(str(out))
    if scaling_factor is None:
        cfg = json.loads((out / "config.json").read_text())
        del cfg["scaling_factor"]
        (out / "config.json").write_text(json.dumps(cfg))
    return out

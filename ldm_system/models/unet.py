"""The diffusion UNet: diffusers' `UNet2DModel` / `UNet2DConditionModel` behind one small wrapper.

`Denoiser.forward(x_t, t, cond)` is the single signature the trainer, samplers and inversion use:

- `conditioning="none"`:  cond is ignored;
- `conditioning="class"`: cond is a LongTensor of class ids (B,), with id `num_classes` meaning
  "no class" (the null class used for classifier-free guidance), or a float tensor (B, E) of
  precomputed class embeddings (null-condition inversion optimises such a vector);
- `conditioning="text"`:  cond is encoder hidden states (B, L, cross_attention_dim).

The class table is diffusers' own (`num_class_embeds`), so an exported UNet loads in diffusers.
Attention runs through `kernels` when `attention` is "triton" or "auto".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    sample_size: int = 8  # latent side length
    in_channels: int = 4
    block_out_channels: tuple[int, ...] = (64, 128)
    attention_levels: tuple[bool, ...] = (False, True)  # self/cross-attention at each resolution
    layers_per_block: int = 2
    attention_head_dim: int = 32
    norm_num_groups: int = 32
    conditioning: Literal["none", "class", "text"] = "none"
    num_classes: int = 0
    cross_attention_dim: int = 0
    attention: Literal["sdpa", "triton", "auto"] = "sdpa"
    dropout: float = 0.0
    # Text UNets only: heads per level as an imported checkpoint fixes them (SD-1.x stores a head *count*
    # in `attention_head_dim`). Empty: derived from attention_head_dim (a per-head width) per level.
    num_attention_heads: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError(
                f"attention_levels has {len(self.attention_levels)} entries, block_out_channels "
                f"{len(self.block_out_channels)}: give one flag per resolution"
            )
        if self.conditioning == "class" and self.num_classes <= 0:
            raise ValueError("conditioning 'class' needs num_classes > 0")
        if self.conditioning == "text" and self.cross_attention_dim <= 0:
            raise ValueError("conditioning 'text' needs cross_attention_dim > 0")
        if self.num_attention_heads and (self.conditioning != "text"
                                         or len(self.num_attention_heads) != len(self.block_out_channels)):
            raise ValueError("num_attention_heads needs conditioning 'text' and one head count per resolution")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"block_out_channels {self.block_out_channels} must be multiples of norm_num_groups {self.norm_num_groups}")


def build_unet(cfg: UNetConfig) -> nn.Module:
    """The bare diffusers UNet for `cfg` (exported as-is)."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    name, kwargs = diffusers_unet_kwargs(cfg)
    return {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}[name](**kwargs)


def diffusers_unet_kwargs(cfg: UNetConfig) -> tuple[str, dict]:
    """(diffusers class name, constructor arguments) for `cfg`: what `build_unet` builds, and what the
    artifact layer compares an imported folder's config.json against."""
    common = dict(
        sample_size=cfg.sample_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        dropout=cfg.dropout,
    )
    if cfg.conditioning == "text":
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
        # UNet2DConditionModel reads `attention_head_dim` as the number of heads (a legacy name), so
        # convert our per-head width into a head count per resolution, unless the checkpoint fixed them.
        heads = cfg.num_attention_heads or tuple(max(1, c // cfg.attention_head_dim) for c in cfg.block_out_channels)
        return "UNet2DConditionModel", dict(**common, down_block_types=down, up_block_types=up,
                                            cross_attention_dim=cfg.cross_attention_dim, attention_head_dim=heads)
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
    return "UNet2DModel", dict(
        **common,
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=cfg.attention_head_dim,
        num_class_embeds=cfg.num_classes + 1 if cfg.conditioning == "class" else None,  # +1: null class
    )


class Denoiser(nn.Module):
    """`(x_t, t, cond) → model output`, whatever the UNet flavour."""

    def __init__(self, cfg: UNetConfig, unet: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.unet = unet if unet is not None else build_unet(cfg)
        self._class_emb_override: torch.Tensor | None = None
        if cfg.conditioning == "class":
            # Lets a caller feed a (B, E) embedding instead of ids: the hook replaces the table's output.
            self.unet.class_embedding.register_forward_hook(self._override_hook)
        if cfg.attention != "sdpa":
            from kernels import use_triton_attention

            use_triton_attention(self.unet, backend=cfg.attention)

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def _override_hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output if self._class_emb_override is None else self._class_emb_override.to(output.dtype)

    def class_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """(B,) ids → (B, E) vectors from the UNet's own table."""
        return self.unet.class_embedding(ids)

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        kind = self.cfg.conditioning
        if kind == "none":
            return self.unet(x, t).sample
        if kind == "text":
            if cond is None:
                raise ValueError("a text-conditioned UNet needs encoder hidden states")
            return self.unet(x, t, encoder_hidden_states=cond).sample
        if cond is None:
            cond = torch.full((x.shape[0],), self.null_class, dtype=torch.long, device=x.device)
        if cond.is_floating_point():  # precomputed (B, E) class embeddings
            self._class_emb_override = cond
            try:
                ids = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
                return self.unet(x, t, class_labels=ids).sample
            finally:
                self._class_emb_override = None
        return self.unet(x, t, class_labels=cond).sample


PRESETS: dict[str, UNetConfig] = {
    # Seconds per step on a CPU: for tests and CI.
    "debug": UNetConfig(block_out_channels=(32, 64), attention_levels=(False, True), layers_per_block=1,
                        attention_head_dim=16, norm_num_groups=16),
    # Fashion-MNIST demo at 32 px (8x8x4 latents with f = 4).
    "small": UNetConfig(block_out_channels=(64, 128), attention_levels=(False, True), layers_per_block=2),
    # 256 px images, f = 8 → 32x32 latents.
    "base": UNetConfig(sample_size=32, block_out_channels=(192, 384, 576, 768),
                       attention_levels=(False, True, True, True), layers_per_block=2, attention_head_dim=64),
    # The LDM paper's class-conditional LDM-4 (ImageNet 256 px, 64x64x3 latents; ~400M params:
    # 192 channels x (1, 2, 3, 5), attention at 1/2..1/8, 32-wide heads, the class embedding fed by
    # cross-attention of width 512). 400.9M parameters here.
    "ldm4": UNetConfig(sample_size=64, in_channels=3, block_out_channels=(192, 384, 576, 960),
                       attention_levels=(False, True, True, True), layers_per_block=2, attention_head_dim=32,
                       conditioning="text", cross_attention_dim=512),
    # Stable-Diffusion-1.x size (859.5M params; 512 px, 64x64x4 latents, CLIP ViT-L/14 text width 768).
    # SD fixes 8 heads per level; we give a per-head width instead, which changes no parameter count.
    "sd1": UNetConfig(sample_size=64, in_channels=4, block_out_channels=(320, 640, 1280, 1280),
                      attention_levels=(True, True, True, False), layers_per_block=2, attention_head_dim=64,
                      conditioning="text", cross_attention_dim=768),
}

__all__ = ["UNetConfig", "build_unet", "diffusers_unet_kwargs", "Denoiser", "PRESETS"]

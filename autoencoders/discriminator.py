"""PatchGAN discriminator (Isola et al. 2017, pix2pix "N-layer" design).

    x (B, C, H, W) -> conv4 s2 -> LReLU
                   -> n_layers x [conv4 (s2, last one s1) -> norm -> LReLU]   width ch * min(2^n, 8)
                   -> conv4 s1 -> logits (B, 1, H / 2^n_layers - 2, W / 2^n_layers - 2)

Each logit judges one overlapping patch. Norm is GroupNorm (default; batch-size independent, no
cross-rank statistics under DDP), BatchNorm, or none. It also carries the two LeCam EMA buffers
(Tseng et al. 2021) so that they are checkpointed with the discriminator.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from autoencoders.config import DiscriminatorConfig


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    return nn.Identity()


class PatchDiscriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig, in_channels: int):
        super().__init__()
        self.cfg = cfg
        self.in_channels = in_channels
        ch, use_bias = cfg.channels, cfg.norm == "none"
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, cfg.n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < cfg.n_layers else 1
            layers += [
                nn.Conv2d(ch * prev, ch * mult, 4, stride, 1, bias=use_bias),
                _norm(cfg.norm, ch * mult),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(ch * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        # LeCam anchors: EMAs of the mean logit on real and on fake images.
        self.register_buffer("lecam_real", torch.zeros(()))
        self.register_buffer("lecam_fake", torch.zeros(()))
        self._init_weights()

    def _init_weights(self) -> None:
        # DCGAN initialisation: N(0, 0.02) convolutions, N(1, 0.02) norm scales.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def enable_gradient_checkpointing(self) -> None:
        """Deliberately a no-op: the PatchGAN's activations are a small fraction of the
        autoencoder's, so recomputing them would cost time without saving meaningful memory."""

    @property
    def min_size(self) -> int:
        """Smallest input side giving a 1x1 logit map: 2^n_layers * 3."""
        return 2**self.cfg.n_layers * 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"discriminator expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if min(x.shape[2:]) < self.min_size:
            raise ValueError(
                f"image size {tuple(x.shape[2:])} too small for disc.n_layers={self.cfg.n_layers}; "
                f"need at least {self.min_size} pixels per side"
            )
        return self.net(x)

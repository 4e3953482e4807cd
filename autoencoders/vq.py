"""Vector-quantised autoencoder: diffusers' VAE Encoder/Decoder with our VectorQuantizer between.

    x (B, C, H, W) -> Encoder -> quant_conv -> h (B, c, H/f, W/f)   ("latents": pre-quantization)
    h -> VectorQuantizer -> z_q -> post_quant_conv -> Decoder -> (B, C, H, W)

As in the LDM paper, the diffusion model works on the continuous pre-quantization latents h and
the quantizer is part of decoding: `decode(h)` quantizes first (`quantize=False` skips it).
Quantizer state (EMA codebook, usage ages, restart pool) updates only in a training-mode forward
with grad enabled; `decode`, `encode_latents` and no-grad previews never change it.
"""
from __future__ import annotations

import torch
import torch.utils.checkpoint
from diffusers.models.autoencoders.vae import Decoder, Encoder
from torch import nn

from autoencoders.config import AutoencoderConfig
from autoencoders.quantizer import VectorQuantizer


class VQAutoencoder(nn.Module):
    kind = "vq"

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        if cfg.kind != "vq":
            raise ValueError(f"VQAutoencoder needs model.kind='vq', got {cfg.kind!r}")
        self.cfg = cfg
        levels = len(cfg.channels)
        c = cfg.latent_channels
        self.encoder = Encoder(
            in_channels=cfg.in_channels,
            out_channels=c,
            down_block_types=("DownEncoderBlock2D",) * levels,
            block_out_channels=tuple(cfg.channels),
            layers_per_block=cfg.layers_per_block,
            norm_num_groups=cfg.norm_groups,
            double_z=False,
            mid_block_add_attention=cfg.mid_attention,
        )
        self.quant_conv = nn.Conv2d(c, c, 1)
        self.quantizer = VectorQuantizer(cfg.quantizer, c)
        self.post_quant_conv = nn.Conv2d(c, c, 1)
        self.decoder = Decoder(
            in_channels=c,
            out_channels=cfg.in_channels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(cfg.channels),
            layers_per_block=cfg.layers_per_block,
            norm_num_groups=cfg.norm_groups,
            mid_block_add_attention=cfg.mid_attention,
        )

    @property
    def last_layer_weight(self) -> torch.Tensor:
        return self.decoder.conv_out.weight

    def enable_gradient_checkpointing(self) -> None:
        """Activation checkpointing of the encoder/decoder blocks, through the hooks diffusers'
        Encoder/Decoder expose (`gradient_checkpointing`, `_gradient_checkpointing_func`)."""

        def checkpointed(module: nn.Module, *args):
            return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)

        for part in (self.encoder, self.decoder):
            part._gradient_checkpointing_func = checkpointed
            part.gradient_checkpointing = True

    def encode_latents(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Pre-quantization latents (B, c, H/f, W/f). `sample` is accepted for interface parity."""
        self.cfg.check_images(x)
        return self.quant_conv(self.encoder(x))

    def decode(self, h: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        self.cfg.check_latents(h)
        if quantize:
            h = self.quantizer(h, update=False)["quantized"]
        return self.decoder(self.post_quant_conv(h))

    def forward(self, x: torch.Tensor, sample_posterior: bool = True) -> dict[str, torch.Tensor]:
        """Training forward: recon, latents, indices, VQ losses and usage statistics."""
        h = self.encode_latents(x)
        q = self.quantizer(h, update=self.training and torch.is_grad_enabled())
        recon = self.decoder(self.post_quant_conv(q["quantized"]))
        return {
            "recon": recon,
            "latents": h,
            "indices": q["indices"],
            "vq_loss": q["loss"],
            "codebook_loss": q["codebook_loss"],
            "commit_loss": q["commit_loss"],
            "perplexity": q["perplexity"],
            "usage": q["usage"],
            "counts": q["counts"],
        }

"""An exported LDM as a `GenerativeModel`: DDIM sampling, built from the export folder's parts
(`artifacts/exported.py`) and the diffusion loop, not from the serving pipeline (which sits above
evaluation). It draws exactly what `LDMPipeline.sample(num, classes=..., steps, guidance, seed)`
draws: the same sampler, the same x_T from a CPU generator seeded with `seed`, and the conditions
and guidance of the one set of conditioning rules (`models/conditioning.py`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ldm_system.diffusion.loop import sample
from ldm_system.diffusion.samplers import SamplerConfig, make_sampler
from ldm_system.eval.metrics import psnr
from ldm_system.models.conditioning import Conditioning
from ldm_system.artifacts.exported import ExportedLDM, load_exported_ldm


class LDMGenerator:
    """DDIM with `steps` steps and guidance scale `guidance`; class models cycle through their classes,
    text models sample under the empty prompt."""

    def __init__(self, path: str | Path, steps: int = 50, guidance: float = 1.0, device: str = "cpu") -> None:
        self.model: ExportedLDM = load_exported_ldm(path, device=device)
        self.steps, self.guidance, self.device = steps, guidance, torch.device(device)
        self.image_shape = self.model.image_shape
        self.schedule = self.model.diffusion.schedule()
        den = self.model.denoiser
        self.conditioning = Conditioning.of(den.cfg, self.model.classes, self.model.text, den.class_embedding, device)
        self.num_classes = den.cfg.num_classes if den.cfg.conditioning == "class" else 0  # sample() cycles them

    @torch.no_grad()
    def reconstruction_psnr(self, images: torch.Tensor) -> float | None:
        """Mean PSNR (dB, on [0, 1]) of `images` through the autoencoder (posterior mode): the ceiling
        stage 1 puts on this model's samples. None for pixel-space models (no autoencoder)."""
        codec = self.model.codec
        if codec.is_identity:
            return None
        x = images.to(self.device).float()
        recon = codec.ae.decode(codec.ae.encode_latents(x, sample=False)).clamp(-1, 1)
        return float(psnr((recon + 1) / 2, (x + 1) / 2).mean())

    @torch.no_grad()
    def sample(self, num: int, seed: int = 0) -> torch.Tensor:
        u = self.model.denoiser.cfg
        classes = self.conditioning.cycle_classes(num) if u.conditioning == "class" else None
        cond = self.conditioning.condition(classes, None, num)  # text models: the empty prompt
        guidance = self.conditioning.guidance(self.guidance, cond)
        sampler = make_sampler(SamplerConfig(name="ddim", num_steps=self.steps,
                                             steps_offset=self.model.grid.steps_offset), self.schedule,
                               self.model.diffusion.prediction_type)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        z = sample(self.model.denoiser, sampler, (num, u.in_channels, u.sample_size, u.sample_size),
                   num_steps=self.steps, cond=cond, guidance=guidance, generator=gen, device=self.device)
        return self.model.codec.decode(z).clamp(-1, 1)

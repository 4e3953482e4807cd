"""An exported LDM as a `GenerativeModel`: DDIM sampling, built from the export folder's parts
(`models/exported.py`) and the diffusion loop, not from the serving pipeline (which sits above
evaluation). It draws exactly what `LDMPipeline.sample(num, classes=..., steps, guidance, seed)`
draws: the same sampler, the same x_T from a CPU generator seeded with `seed`, the same guidance.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ldm_system.diffusion.guidance import Guidance
from ldm_system.diffusion.loop import sample
from ldm_system.diffusion.samplers import SamplerConfig, make_sampler
from ldm_system.models.exported import ExportedLDM, load_exported_ldm


class LDMGenerator:
    """DDIM with `steps` steps and guidance scale `guidance`; class models cycle through their classes,
    text models sample under the empty prompt."""

    def __init__(self, path: str | Path, steps: int = 50, guidance: float = 1.0, device: str = "cpu") -> None:
        self.model: ExportedLDM = load_exported_ldm(path, device=device)
        self.steps, self.guidance, self.device = steps, guidance, torch.device(device)
        self.image_shape = self.model.image_shape
        self.schedule = self.model.diffusion.schedule()

    def _conditions(self, num: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(cond, null cond) for `num` samples: class ids (num,) and the null class (1,); prompt
        states (num, L, D) and the empty prompt's (1, L, D); or (None, None) when unconditional."""
        den = self.model.denoiser
        if den.cfg.conditioning == "class":
            k = den.cfg.num_classes
            ids = torch.tensor([i % k for i in range(num)], dtype=torch.long, device=self.device)
            return ids, torch.full((1,), den.null_class, dtype=torch.long, device=self.device)
        if den.cfg.conditioning == "text":
            return self.model.text.encode([""] * num), self.model.text.null()
        return None, None

    @torch.no_grad()
    def sample(self, num: int, seed: int = 0) -> torch.Tensor:
        u = self.model.denoiser.cfg
        cond, null = self._conditions(num)
        guidance = None if cond is None or self.guidance == 1.0 else Guidance(scale=self.guidance, null_cond=null)
        sampler = make_sampler(SamplerConfig(name="ddim", num_steps=self.steps), self.schedule,
                               self.model.diffusion.prediction_type)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        z = sample(self.model.denoiser, sampler, (num, u.in_channels, u.sample_size, u.sample_size),
                   num_steps=self.steps, cond=cond, guidance=guidance, generator=gen, device=self.device)
        return self.model.codec.decode(z).clamp(-1, 1)

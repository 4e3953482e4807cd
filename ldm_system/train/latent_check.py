"""The start-of-stage-2 check that the latents a run reads have the unit std their scale promises.

The stored scale is measured on one kind of latent (ldm_system/artifacts/latent_scale.py); a run that
reads another kind (samples where the mode was measured), shards encoded by an older autoencoder, or a
diffusers scaling_factor that never fit its data gives the diffusion schedule the wrong signal-to-noise
ratio without any error. The first `batches` training batches (after scaling) are pooled; a std outside
[1/tolerance, tolerance] is a warning that names what was seen, once per run.
"""
from __future__ import annotations

import logging
import math
import os

import torch

from ldm_system.artifacts.latent_scale import TOLERANCE

log = logging.getLogger("ldm_system")


class LatentStdCheck:
    def __init__(self, what: str, batches: int = 8, tolerance: float = TOLERANCE) -> None:
        self.what, self.batches, self.tolerance = what, batches, tolerance
        self.seen, self.total, self.total_sq, self.count = 0, 0.0, 0.0, 0
        self.std: float | None = None  # set once `batches` batches were seen

    def update(self, x0: torch.Tensor) -> None:
        """Pool one batch of scaled latents (B, c, h, w); after the last one, warn if the std is off."""
        if self.seen >= self.batches:
            return
        x = x0.detach().double()
        self.total += x.sum().item()
        self.total_sq += x.pow(2).sum().item()
        self.count += x.numel()
        self.seen += 1
        if self.seen == self.batches:
            mean = self.total / self.count
            self.std = math.sqrt(max(self.total_sq / self.count - mean * mean, 0.0))
            first_rank = os.environ.get("RANK", "0") == "0"  # every rank sees alike batches: say it once
            if first_rank and not 1.0 / self.tolerance <= self.std <= self.tolerance:
                log.warning(f"the latents stage 2 trains on have std {self.std:.3g} over the first {self.batches} "
                            f"batches (after scaling), not ~1: {self.what}. The noise schedule sees the wrong "
                            "signal-to-noise ratio; re-measure the scale on what this run trains on")


__all__ = ["LatentStdCheck"]

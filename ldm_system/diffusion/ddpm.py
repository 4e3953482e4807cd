"""Ancestral DDPM sampling (Ho et al. 2020), on any sub-grid of the training timesteps.

On a strided grid t → t' (t' the next grid point, ᾱ_{t'} = 1 after the last one) the chain uses the
effective β_t = 1 − ᾱ_t/ᾱ_{t'}, the usual "respacing" of Nichol & Dhariwal 2021, §4.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import SamplerBase, StepOutput, X0Processing, step_noise
from .schedules import NoiseSchedule
from .spacing import spaced_timesteps
from .targets import predicted_x0

VARIANCE_TYPES = ("fixed_small", "fixed_large")
MIN_VARIANCE = 1e-20  # keeps the last step's σ² = 0 finite under sqrt/log, as diffusers does


class DDPMSampler(SamplerBase):
    default_spacing = "leading"

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: str = "eps",
        *,
        spacing: str | None = None,
        steps_offset: int = 0,
        variance_type: str = "fixed_small",
        x0_processing: X0Processing | None = None,
    ) -> None:
        super().__init__(schedule, prediction, spacing=spacing, steps_offset=steps_offset, x0_processing=x0_processing)
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"unknown DDPM variance_type {variance_type!r}; choose one of {list(VARIANCE_TYPES)}")
        self.variance_type = variance_type

    def set_timesteps(self, num_steps: int) -> None:
        self.timesteps = spaced_timesteps(self.schedule.num_train_timesteps, num_steps, self.spacing, self.steps_offset)

    def prev_timestep(self, t: int | Tensor) -> int:
        """The next grid point, or −1 after the last one (where ᾱ = 1: the chain ends at x₀)."""
        i = self.index_of(t)
        return int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1

    def _alpha_bars(self, t: int) -> tuple[float, float]:
        prev = self.prev_timestep(t)
        return self.schedule.alpha_bar(t), (self.schedule.alpha_bar(prev) if prev >= 0 else 1.0)

    def variance(self, t: int) -> float:
        ab_t, ab_prev = self._alpha_bars(t)
        beta_t = 1 - ab_t / ab_prev
        if self.variance_type == "fixed_large":
            return beta_t  # σ_t² = β_t (DDPM §3.2, the upper bound)
        return max((1 - ab_prev) / (1 - ab_t) * beta_t, MIN_VARIANCE)  # β̃_t, DDPM eq. 7 (lower bound)

    def step(
        self, model_output: Tensor, t: int | Tensor, sample: Tensor, generator: torch.Generator | None = None
    ) -> StepOutput:
        t = int(t)
        ab_t, ab_prev = self._alpha_bars(t)
        beta_t = 1 - ab_t / ab_prev
        x0 = predicted_x0(self.prediction, model_output, sample, math.sqrt(ab_t), math.sqrt(1 - ab_t))
        x0 = self.x0_processing(x0)
        # DDPM eq. 7: μ̃_t = √ᾱ_{t'} β_t/(1 − ᾱ_t) · x̂₀ + √(1 − β_t) (1 − ᾱ_{t'})/(1 − ᾱ_t) · x_t
        mean = (math.sqrt(ab_prev) * beta_t / (1 - ab_t)) * x0 + (
            math.sqrt(1 - beta_t) * (1 - ab_prev) / (1 - ab_t)
        ) * sample
        if t > 0:  # no noise into x₀ itself (DDPM Algorithm 2, line 3)
            mean = mean + math.sqrt(self.variance(t)) * step_noise(model_output, generator)
        return StepOutput(prev_sample=mean.to(sample.dtype), pred_x0=x0)  # the latent keeps its dtype


__all__ = ["DDPMSampler", "VARIANCE_TYPES"]

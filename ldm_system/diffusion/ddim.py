"""DDIM (Song et al. 2021): the non-Markovian sampler; η = 0 is deterministic (the probability-flow ODE's
first-order solver), η = 1 matches DDPM's posterior variance.

Grid and end-point conventions follow diffusers' DDIMScheduler:
- the previous timestep is t − ⌊T/n⌋ (a fixed stride, for every spacing; with "linspace" or a T
  that n does not divide this is not always the next grid point, exactly as in diffusers);
- below t = 0, ᾱ is 1 (`set_alpha_to_one=True`, the default: the last step returns x̂₀) or ᾱ_0.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import SamplerBase, StepOutput, X0Processing, step_noise
from .schedules import NoiseSchedule
from .spacing import spaced_timesteps
from .targets import eps_coefficients, predicted_eps, predicted_x0, x0_coefficients


class DDIMSampler(SamplerBase):
    default_spacing = "leading"

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: str = "eps",
        *,
        spacing: str | None = None,
        steps_offset: int = 0,
        eta: float = 0.0,
        set_alpha_to_one: bool = True,
        x0_processing: X0Processing | None = None,
    ) -> None:
        super().__init__(schedule, prediction, spacing=spacing, steps_offset=steps_offset, x0_processing=x0_processing)
        if eta < 0:
            raise ValueError(f"DDIM eta must be >= 0, got {eta}")
        self.eta = float(eta)
        self.final_alpha_bar = 1.0 if set_alpha_to_one else schedule.alpha_bar(0)

    def set_timesteps(self, num_steps: int) -> None:
        self.timesteps = spaced_timesteps(self.schedule.num_train_timesteps, num_steps, self.spacing, self.steps_offset)

    def prev_timestep(self, t: int | Tensor) -> int:
        self._require_timesteps()
        return int(t) - self.schedule.num_train_timesteps // len(self.timesteps)

    def alpha_bars(self, t: int | Tensor) -> tuple[float, float]:
        """(ᾱ_t, ᾱ_{t'}) for the step t → t' = prev_timestep(t)."""
        prev = self.prev_timestep(t)
        return self.schedule.alpha_bar(int(t)), (self.schedule.alpha_bar(prev) if prev >= 0 else self.final_alpha_bar)

    def step_std(self, t: int | Tensor) -> float:
        """DDIM eq. 16: σ_t(η) = η √((1 − ᾱ_{t'})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t'})."""
        ab_t, ab_prev = self.alpha_bars(t)
        return self.eta * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))

    def step(
        self, model_output: Tensor, t: int | Tensor, sample: Tensor, generator: torch.Generator | None = None
    ) -> StepOutput:
        ab_t, ab_prev = self.alpha_bars(t)
        alpha, sigma = math.sqrt(ab_t), math.sqrt(1 - ab_t)
        x0 = self.x0_processing(predicted_x0(self.prediction, model_output, sample, alpha, sigma))
        eps = predicted_eps(self.prediction, model_output, sample, alpha, sigma)
        std = self.step_std(t)
        # DDIM eq. 12: x_{t'} = √ᾱ_{t'} x̂₀ + √(1 − ᾱ_{t'} − σ²) ε̂ + σ z
        prev = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - std**2, 0.0)) * eps
        if self.eta > 0:
            prev = prev + std * step_noise(model_output, generator)
        return StepOutput(prev_sample=prev.to(sample.dtype), pred_x0=x0)  # the latent keeps its dtype

    def affine_coefficients(self, t: int | Tensor) -> tuple[float, float]:
        """(A, B) with step(m, t, x).prev_sample = A·x + B·m, valid for η = 0 without x̂₀ processing.

        The η = 0 step is affine in x_t for a fixed model output m, so it can be solved for x_t
        exactly; DDIM inversion rests on this.
        """
        ab_t, ab_prev = self.alpha_bars(t)
        alpha, sigma = math.sqrt(ab_t), math.sqrt(1 - ab_t)
        a, b = x0_coefficients(self.prediction, alpha, sigma)
        c, d = eps_coefficients(self.prediction, alpha, sigma)
        p, q = math.sqrt(ab_prev), math.sqrt(1 - ab_prev)
        return p * a + q * c, p * b + q * d

    @property
    def is_invertible(self) -> bool:
        """η = 0 and no x̂₀ clipping: the step is a bijection in x_t that `affine_coefficients` solves."""
        return self.eta == 0 and self.x0_processing == X0Processing()


__all__ = ["DDIMSampler"]

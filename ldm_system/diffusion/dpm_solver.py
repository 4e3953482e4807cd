"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): a second-order multistep solver of the
probability-flow ODE in the data-prediction form, in log-SNR time λ = log(α/σ).

Conventions follow diffusers' DPMSolverMultistepScheduler with algorithm "dpmsolver++", solver order 2,
the "midpoint" second-order form and final σ = 0:
- the grid excludes t = 0 (see `spaced_timesteps(..., exclude_zero=True)`), default spacing "linspace";
- the first step is first order (no history yet) and the last step goes to σ = 0, i.e. returns x̂₀;
- with zero terminal SNR, ᾱ_{T−1} is raised to 2⁻²⁴ so that λ stays finite.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import SamplerBase, StepOutput, X0Processing, upcast
from .schedules import NoiseSchedule
from .spacing import spaced_timesteps
from .targets import predicted_x0

MIN_ALPHA_BAR = 2.0**-24  # replaces ᾱ = 0 at a zero-SNR end so that log σ/α is finite


class DPMSolverPP2M(SamplerBase):
    default_spacing = "linspace"

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: str = "eps",
        *,
        spacing: str | None = None,
        steps_offset: int = 0,
        x0_processing: X0Processing | None = None,
    ) -> None:
        super().__init__(schedule, prediction, spacing=spacing, steps_offset=steps_offset, x0_processing=x0_processing)
        self._alphas: list[float] = []
        self._sigmas: list[float] = []
        self._last: tuple[int, Tensor] | None = None  # (grid index, x̂₀) of the previous step

    def set_timesteps(self, num_steps: int) -> None:
        T = self.schedule.num_train_timesteps
        self.timesteps = spaced_timesteps(T, num_steps, self.spacing, self.steps_offset, exclude_zero=True)
        ab = [self.schedule.alpha_bar(int(t)) or MIN_ALPHA_BAR for t in self.timesteps]  # only ᾱ = 0 is replaced
        # One extra grid point after the last timestep: α = 1, σ = 0 (the data).
        self._alphas = [math.sqrt(a) for a in ab] + [1.0]
        self._sigmas = [math.sqrt(1 - a) for a in ab] + [0.0]
        self._last = None

    def _lambda(self, i: int) -> float:
        return math.log(self._alphas[i]) - math.log(self._sigmas[i])  # log-SNR / 2

    def step(
        self, model_output: Tensor, t: int | Tensor, sample: Tensor, generator: torch.Generator | None = None
    ) -> StepOutput:
        """generator is unused (the solver is deterministic); it is accepted for the common contract."""
        i = self.index_of(t)
        x = upcast(sample)
        x0 = predicted_x0(self.prediction, upcast(model_output), x, self._alphas[i], self._sigmas[i])
        x0 = self.x0_processing(x0)
        if self._sigmas[i + 1] == 0:
            prev = x0  # first-order update into σ = 0 lands exactly on x̂₀
        elif self._last is not None and self._last[0] == i - 1:
            prev = self._second_order(i, x, x0, self._last[1])
        else:
            prev = self._first_order(i, x, x0)
        self._last = (i, x0)
        return StepOutput(prev_sample=prev.to(sample.dtype), pred_x0=x0.to(sample.dtype))

    def _first_order(self, i: int, x: Tensor, x0: Tensor) -> Tensor:
        # DPM-Solver++ eq. (first order) = DDIM: x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) x̂₀
        h = self._lambda(i + 1) - self._lambda(i)
        return (self._sigmas[i + 1] / self._sigmas[i]) * x - (self._alphas[i + 1] * math.expm1(-h)) * x0

    def _second_order(self, i: int, x: Tensor, x0: Tensor, x0_prev: Tensor) -> Tensor:
        # DPM-Solver++(2M), Algorithm 2: D = (1 + 1/(2r)) x̂₀(s) − 1/(2r) x̂₀(s−1) with r = h_{i−1}/h_i
        h = self._lambda(i + 1) - self._lambda(i)
        r = (self._lambda(i) - self._lambda(i - 1)) / h
        d1 = (x0 - x0_prev) / r
        coef = self._alphas[i + 1] * math.expm1(-h)  # α_t (e^{−h} − 1)
        return (self._sigmas[i + 1] / self._sigmas[i]) * x - coef * x0 - 0.5 * coef * d1


__all__ = ["DPMSolverPP2M", "MIN_ALPHA_BAR"]

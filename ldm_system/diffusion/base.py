"""What every sampler shares: the step contract, its output, and optional x̂₀ clipping / thresholding.

The contract is diffusers' scheduler contract: `set_timesteps(n)`, then for each t in `timesteps`
`step(model_output, t, sample, generator=...)` → the sample at the previous (less noisy) timestep;
`add_noise(x0, noise, t)` for training and SDEdit. No model lives in a sampler.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .schedules import NoiseSchedule
from .spacing import SPACINGS
from .targets import check_prediction


@dataclass(frozen=True)
class StepOutput:
    prev_sample: Tensor  # x at the previous timestep, same shape/dtype as the input sample
    pred_x0: Tensor  # the (possibly clipped) x̂₀ this step used


@runtime_checkable
class Sampler(Protocol):
    schedule: NoiseSchedule
    prediction: str
    timesteps: Tensor  # descending LongTensor, set by set_timesteps

    def set_timesteps(self, num_steps: int) -> None: ...

    def step(
        self, model_output: Tensor, t: int | Tensor, sample: Tensor, generator: torch.Generator | None = None
    ) -> StepOutput: ...

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class X0Processing:
    """Optional x̂₀ post-processing; both off by default, which is right for latents (no fixed range).

    clip_sample: clamp x̂₀ to [−c, c] (pixel-space DDPM practice).
    thresholding: dynamic thresholding (Saharia et al. 2022, §2.3): s = the `ratio` quantile of |x̂₀|
    per sample, clamped to [1, max_value]; x̂₀ ← clamp(x̂₀, −s, s)/s. Takes precedence over clipping.
    """

    clip_sample: float | None = None
    thresholding: bool = False
    threshold_ratio: float = 0.995
    threshold_max: float = 1.0

    def __post_init__(self) -> None:
        if self.clip_sample is not None and self.clip_sample <= 0:
            raise ValueError(f"clip_sample must be positive or None, got {self.clip_sample}")
        if not 0 < self.threshold_ratio <= 1:
            raise ValueError(f"threshold_ratio must lie in (0, 1], got {self.threshold_ratio}")

    def __call__(self, x0: Tensor) -> Tensor:
        if self.thresholding:
            return dynamic_threshold(x0, self.threshold_ratio, self.threshold_max)
        if self.clip_sample is not None:
            return x0.clamp(-self.clip_sample, self.clip_sample)
        return x0


def upcast(x: Tensor) -> Tensor:
    """fp16/bf16 → fp32 for solver arithmetic; fp32/fp64 unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def dynamic_threshold(x0: Tensor, ratio: float, max_value: float) -> Tensor:
    flat = upcast(x0).flatten(1)  # (B, N); quantile needs float32/64
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1.0, max=max_value).unsqueeze(1)  # (B, 1)
    return (torch.maximum(torch.minimum(flat, s), -s) / s).reshape(x0.shape).to(x0.dtype)


class SamplerBase:
    """Holds the schedule, prediction type and timestep grid; subclasses implement `step`."""

    default_spacing = "leading"

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: str = "eps",
        *,
        spacing: str | None = None,
        steps_offset: int = 0,
        x0_processing: X0Processing | None = None,
    ) -> None:
        spacing = spacing or self.default_spacing
        if spacing not in SPACINGS:
            raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {list(SPACINGS)}")
        if steps_offset < 0:
            raise ValueError(f"steps_offset must be >= 0, got {steps_offset}")
        self.schedule = schedule
        self.prediction = check_prediction(prediction)
        self.spacing = spacing
        self.steps_offset = steps_offset
        self.x0_processing = x0_processing or X0Processing()
        self.timesteps = torch.empty(0, dtype=torch.long)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return self.schedule.add_noise(x0, noise, t)

    def _require_timesteps(self) -> None:
        if len(self.timesteps) == 0:
            raise RuntimeError(f"{type(self).__name__}.set_timesteps(n) must be called before step()")

    def index_of(self, t: int | Tensor) -> int:
        """Position of t in the current grid."""
        self._require_timesteps()
        hits = (self.timesteps == int(t)).nonzero()
        if len(hits) == 0:
            raise ValueError(f"timestep {int(t)} is not on this sampler's grid {self.timesteps.tolist()}")
        return int(hits[0])


def step_noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Fresh N(0, I) noise shaped like the model output (drawn as diffusers draws it, for parity)."""
    device = generator.device if generator is not None else like.device  # a CPU generator drives CUDA runs too
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


__all__ = ["Sampler", "SamplerBase", "StepOutput", "X0Processing", "dynamic_threshold", "step_noise", "upcast"]

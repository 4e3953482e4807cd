"""DDIM inversion: x₀ → x_T by running the η = 0 DDIM update backwards, and reconstruction x_T → x₀.

For a fixed model output m, one η = 0 DDIM step t → t' is affine: x_{t'} = A x_t + B m
(`DDIMSampler.affine_coefficients`). Inverting it needs m = model(x_t, t) at the unknown x_t, so the
usual inversion (Song et al. 2021, §4.3 and §5.4) evaluates the model at the
known x_{t'} instead. Fixed-point refinement then iterates x_t ← (x_{t'} − B·model(x_t, t))/A k times,
which converges to the exact inverse of the sampling step when the model is smooth.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .ddim import DDIMSampler
from .guidance import Cond, Guidance, ModelFn, guided_output
from .loop import StepCallback, sample


@dataclass(frozen=True, eq=False)
class Inversion:
    """The inverted trajectory in *sampling* order: trajectory[i] is the latent entering sampling step
    i (trajectory[0] = x_T) and trajectory[-1] is the input x₀; len = num_steps + 1."""

    trajectory: tuple[Tensor, ...]
    timesteps: Tensor  # the DDIM grid (descending) the trajectory lives on

    @property
    def x_T(self) -> Tensor:
        return self.trajectory[0]

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def check_invertible(sampler: object) -> DDIMSampler:
    if not isinstance(sampler, DDIMSampler):
        raise ValueError(f"inversion needs a DDIMSampler, got {type(sampler).__name__}")
    if not sampler.is_invertible:
        raise ValueError("inversion needs a deterministic DDIM step: eta = 0 and no x0 clipping/thresholding")
    return sampler


def inverse_step(sampler: DDIMSampler, model_output: Tensor, t: int | Tensor, x_prev: Tensor) -> Tensor:
    """Solve x_{t'} = A x_t + B m for x_t (exact inverse of `sampler.step` for this m)."""
    a, b = sampler.affine_coefficients(t)
    return (x_prev - b * model_output) / a


@torch.no_grad()
def ddim_invert(
    model_fn: ModelFn,
    sampler: DDIMSampler,
    x0: Tensor,
    *,
    num_steps: int,
    cond: Cond = None,
    guidance: Guidance | None = None,
    fixed_point_iters: int = 0,
    callback: StepCallback | None = None,
) -> Inversion:
    """Invert x₀ (B, C, H, W) along the sampler's `num_steps`-step grid.

    guidance: usually None (scale 1): inverting with a large guidance scale drifts (Mokady et al.
    2022, §3.1); guided reconstruction is what null-condition inversion fixes.
    fixed_point_iters: extra model calls per step refining x_t (k = 0 is plain DDIM inversion).
    callback: called after each inverted step as (i, t, x_t, x₀), x₀ being the input.
    """
    check_invertible(sampler)
    if fixed_point_iters < 0:
        raise ValueError(f"fixed_point_iters must be >= 0, got {fixed_point_iters}")
    sampler.set_timesteps(num_steps)
    x = x0
    trajectory = [x0]
    for i in reversed(range(num_steps)):  # from the least noisy grid step to the noisiest
        t = sampler.timesteps[i]
        t_batch = t.to(x.device).expand(x.shape[0])
        x_t = x  # first guess: the model output at x_{t'} stands in for the one at x_t
        for _ in range(1 + fixed_point_iters):
            out = guided_output(model_fn, x_t, t_batch, cond, guidance, step_index=i)
            x_t = inverse_step(sampler, out, t, x)
        x = x_t
        trajectory.append(x)
        if callback is not None:
            callback(i, t, x, x0)
    return Inversion(trajectory=tuple(reversed(trajectory)), timesteps=sampler.timesteps.clone())


@torch.no_grad()
def reconstruct(
    model_fn: ModelFn,
    sampler: DDIMSampler,
    inversion: Inversion,
    *,
    cond: Cond = None,
    guidance: Guidance | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """DDIM-sample from the inverted x_T on the same grid (x₀ again, up to the inversion error)."""
    check_invertible(sampler)
    return sample(
        model_fn, sampler, inversion.x_T.shape, num_steps=inversion.num_steps, cond=cond, guidance=guidance,
        x_T=inversion.x_T, callback=callback,
    )


def latent_mse(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample mean squared error (B,) between two latent batches (decode for image metrics)."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)


__all__ = ["Inversion", "check_invertible", "ddim_invert", "inverse_step", "latent_mse", "reconstruct"]

"""The denoising loop, kept small and visible: for each grid timestep, one (guided) model call and one
sampler step. Sampling draws x_T ~ N(0, I) (all our samplers are variance preserving)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .base import Sampler
from .guidance import Cond, Guidance, ModelFn, guided_output

StepCallback = Callable[[int, Tensor, Tensor, Tensor], None]  # (step index, t, x_prev, x̂₀)


def denoise(
    model_fn: ModelFn,
    sampler: Sampler,
    x: Tensor,
    *,
    cond: Cond = None,
    guidance: Guidance | None = None,
    generator: torch.Generator | None = None,
    start: int = 0,
    stop: int | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """Run grid steps start … stop−1 of the sampler's current timesteps from x (the latent at step `start`).

    Does not reset the sampler, so two calls over consecutive ranges equal one call over the union
    (multistep solvers keep their history).
    """
    stop = len(sampler.timesteps) if stop is None else stop
    if not 0 <= start <= stop <= len(sampler.timesteps):
        raise ValueError(f"step range [{start}, {stop}) is outside the {len(sampler.timesteps)}-step grid")
    steps: Sequence[int] = range(start, stop)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="sampling", leave=False)
    for i in steps:
        t = sampler.timesteps[i]
        t_batch = t.to(x.device).expand(x.shape[0])  # (B,) long
        out = guided_output(model_fn, x, t_batch, cond, guidance, step_index=i)
        step = sampler.step(out, t, x, generator=generator)
        x = step.prev_sample
        if callback is not None:
            callback(i, t, x, step.pred_x0)
    return x


def sample(
    model_fn: ModelFn,
    sampler: Sampler,
    shape: Sequence[int],
    *,
    num_steps: int,
    cond: Cond = None,
    guidance: Guidance | None = None,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """Draw samples (B, C, H, W) with `num_steps` sampler steps. x_T overrides the initial noise
    (reconstruction from an inverted latent); otherwise it is drawn from `generator`."""
    sampler.set_timesteps(num_steps)
    if x_T is None:
        gen_device = generator.device if generator is not None else device
        x_T = torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype)
        x_T = x_T if device is None else x_T.to(device)
    elif tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
    return denoise(
        model_fn, sampler, x_T, cond=cond, guidance=guidance, generator=generator, progress=progress, callback=callback
    )


__all__ = ["StepCallback", "denoise", "sample"]

"""Editing by inversion: class edits, SDEdit, and interpolation between inverted latents."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Sampler
from .ddim import DDIMSampler
from .guidance import Cond, Guidance, ModelFn
from .inversion import Inversion, check_invertible, ddim_invert
from .loop import StepCallback, denoise


@torch.no_grad()
def class_edit(
    model_fn: ModelFn,
    sampler: DDIMSampler,
    x0: Tensor,
    *,
    num_steps: int,
    source_cond: Cond,
    target_cond: Cond,
    keep_steps: int,
    guidance: Guidance | None = None,
    inversion: Inversion | None = None,
    fixed_point_iters: int = 0,
    callback: StepCallback | None = None,
) -> Tensor:
    """Invert x₀ under `source_cond`, then sample from x_T: the first `keep_steps` steps (the noisy,
    layout-setting ones) under `source_cond`, the rest under `target_cond`.

    keep_steps is the strength knob: num_steps reproduces the reconstruction, 0 regenerates fully
    under the target class from the inverted noise. For a guided edit pass the guidance from
    `null_condition_inversion(...).guidance()` (and its `.inversion`), so the source phase follows
    the pivot trajectory.
    """
    check_invertible(sampler)
    if not 0 <= keep_steps <= num_steps:
        raise ValueError(f"keep_steps must lie in [0, {num_steps}], got {keep_steps}")
    if inversion is None:
        inversion = ddim_invert(
            model_fn, sampler, x0, num_steps=num_steps, cond=source_cond, fixed_point_iters=fixed_point_iters,
            callback=callback,
        )
    elif inversion.num_steps != num_steps:
        raise ValueError(f"the inversion has {inversion.num_steps} steps, num_steps is {num_steps}")
    sampler.set_timesteps(num_steps)
    x = denoise(model_fn, sampler, inversion.x_T, cond=source_cond, guidance=guidance, stop=keep_steps,
                callback=callback)
    return denoise(model_fn, sampler, x, cond=target_cond, guidance=guidance, start=keep_steps, callback=callback)


def sdedit_start(num_steps: int, strength: float) -> int:
    """Index of the first grid step SDEdit runs: the last ⌊n·strength⌋ steps run (diffusers' img2img rule)."""
    if not 0 <= strength <= 1:
        raise ValueError(f"SDEdit strength must lie in [0, 1], got {strength}")
    return num_steps - min(int(num_steps * strength), num_steps)


@torch.no_grad()
def sdedit(
    model_fn: ModelFn,
    sampler: Sampler,
    x0: Tensor,
    *,
    num_steps: int,
    strength: float,
    cond: Cond = None,
    guidance: Guidance | None = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """SDEdit (Meng et al. 2022): diffuse x₀ to the noise level of `strength`, then denoise.

    strength 0 returns x₀ untouched; strength 1 starts from pure noise, i.e. it *is* plain sampling
    with the same generator (the usual convention that sampling starts from N(0, I) at the first grid
    step, whatever ᾱ is there). Noise is drawn exactly as `sample` draws x_T.
    """
    start = sdedit_start(num_steps, strength)
    sampler.set_timesteps(num_steps)
    if start == num_steps:
        return x0.clone()
    gen_device = generator.device if generator is not None else x0.device
    noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)
    if start == 0:
        x = noise
    else:
        t = sampler.timesteps[start].to(x0.device).expand(x0.shape[0])
        x = sampler.add_noise(x0, noise, t)  # q(x_t | x₀), DDPM eq. 4
    return denoise(model_fn, sampler, x, cond=cond, guidance=guidance, generator=generator, start=start,
                   callback=callback)


def slerp(z0: Tensor, z1: Tensor, alpha: float | Tensor, eps: float = 1e-7) -> Tensor:
    """Spherical interpolation per sample (Shoemake 1985), for Gaussian latents such as inverted x_T.

    Linear interpolation of two independent N(0, I) latents shrinks the norm (by 1/√2 halfway), which
    pushes the sampler off the typical set; slerp keeps equal norms equal. alpha: float or (B,).
    Falls back to lerp for (anti-)parallel pairs, where the great circle is undefined.
    """
    if z0.shape != z1.shape:
        raise ValueError(f"slerp needs equal shapes, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    a, b = z0.flatten(1).double(), z1.flatten(1).double()  # (B, N)
    alpha_t = torch.as_tensor(alpha, dtype=torch.float64, device=a.device).reshape(-1, 1)  # (B or 1, 1)
    cos = (a * b).sum(1, keepdim=True) / (a.norm(dim=1, keepdim=True) * b.norm(dim=1, keepdim=True))
    theta = torch.arccos(cos.clamp(-1, 1))  # (B, 1)
    sin = torch.sin(theta)
    parallel = sin.abs() < eps
    safe_sin = torch.where(parallel, torch.ones_like(sin), sin)
    w0 = torch.where(parallel, 1 - alpha_t, torch.sin((1 - alpha_t) * theta) / safe_sin)
    w1 = torch.where(parallel, alpha_t, torch.sin(alpha_t * theta) / safe_sin)
    return (w0 * a + w1 * b).reshape(z0.shape).to(z0.dtype)


__all__ = ["class_edit", "sdedit", "sdedit_start", "slerp"]

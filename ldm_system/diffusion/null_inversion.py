"""Null-condition inversion: the class-conditional analogue of null-text inversion (Mokady et al. 2022).

DDIM inversion at guidance scale 1 gives a "pivot" trajectory x*_T … x*_0. Sampling back from x*_T at
a guidance scale s > 1 drifts away from it. For each sampling step i we therefore optimise the
*unconditional* input ∅_i (a float embedding, e.g. the null class's embedding vector) so that

    ‖x*_{i+1} − DDIM(u(∅_i) + s·(c − u(∅_i)), t_i, x̄_i)‖²        (Mokady et al. 2022, §3.2)

is small, starting from ∅_{i−1}, then step x̄ with the optimised ∅_i (their Algorithm 1). The
conditional output c is fixed within a step, so each inner iteration costs one forward and one
backward pass. Guided sampling from x*_T with the per-step ∅_i then reproduces the pivot trajectory.

Interface: `model_fn(x, t, cond)` must accept a float (B, E) tensor as the condition and be
differentiable with respect to it (the ldm UNet wrapper takes (B, E) class embeddings).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .ddim import DDIMSampler
from .guidance import Cond, Guidance, ModelFn, cfg_combine, expand_cond
from .inversion import Inversion, check_invertible, ddim_invert
from .loop import StepCallback


@dataclass(frozen=True, eq=False)
class NullInversion:
    inversion: Inversion  # the scale-1 pivot trajectory
    null_conds: tuple[Tensor, ...]  # one optimised unconditional embedding per sampling step
    scale: float  # the guidance scale the embeddings were fitted for
    losses: tuple[float, ...]  # per-step ‖x*_{i+1} − x̄_{i+1}‖² (mean) after optimisation

    @property
    def x_T(self) -> Tensor:
        return self.inversion.x_T

    def guidance(self, rescale: float = 0.0) -> Guidance:
        """The guidance that reproduces the pivot trajectory when sampling from x_T."""
        return Guidance(scale=self.scale, null_cond=list(self.null_conds), rescale=rescale)


class _Adam:
    """Adam on one tensor (Kingma & Ba 2015, Algorithm 1, default β₁, β₂, ε).

    Written out instead of torch.optim.Adam: building a torch optimizer imports torch._dynamo, which
    costs seconds at the first call of `ldm invert`, for eight lines of arithmetic.
    """

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m: Tensor | None = None
        self.v: Tensor | None = None
        self.k = 0

    def update(self, param: Tensor, grad: Tensor) -> Tensor:
        self.k += 1
        self.m = grad * (1 - self.b1) if self.m is None else self.b1 * self.m + (1 - self.b1) * grad
        self.v = grad**2 * (1 - self.b2) if self.v is None else self.b2 * self.v + (1 - self.b2) * grad**2
        m_hat = self.m / (1 - self.b1**self.k)  # bias corrections
        v_hat = self.v / (1 - self.b2**self.k)
        return param - self.lr * m_hat / (v_hat.sqrt() + self.eps)


def _fit_null(
    model_fn: ModelFn,
    sampler: DDIMSampler,
    x: Tensor,
    t: Tensor,
    out_cond: Tensor,
    target: Tensor,
    null: Tensor,
    scale: float,
    inner_steps: int,
    lr: float,
    tol: float,
) -> Tensor:
    """Adam on the unconditional embedding for one sampling step; returns the fitted embedding."""
    t_batch = t.to(x.device).expand(x.shape[0])
    null = null.detach().clone()
    adam = _Adam(lr)
    for _ in range(inner_steps):
        null.requires_grad_(True)
        out_uncond = model_fn(x, t_batch, expand_cond(null, x.shape[0]))
        x_prev = sampler.step(cfg_combine(out_cond, out_uncond, scale), t, x).prev_sample
        loss = (x_prev.float() - target.float()).pow(2).mean()
        if loss.item() < tol:  # early stop (Mokady et al. 2022, Algorithm 1 uses ε = 1e-5)
            break
        # autograd.grad, not backward: the network's own .grad buffers stay untouched
        (grad,) = torch.autograd.grad(loss, [null])
        null = adam.update(null.detach(), grad)
    return null.detach()


def null_condition_inversion(
    model_fn: ModelFn,
    sampler: DDIMSampler,
    x0: Tensor,
    *,
    num_steps: int,
    cond: Cond,
    null_cond: Tensor,
    scale: float,
    inner_steps: int = 10,
    lr: float = 1e-2,
    tol: float = 1e-5,
    fixed_point_iters: int = 0,
    inversion: Inversion | None = None,
    callback: StepCallback | None = None,
) -> NullInversion:
    """Fit per-step null embeddings so that guided DDIM sampling at `scale` from x_T reconstructs x₀.

    cond: the image's condition (class ids or embeddings); null_cond: the starting unconditional
    embedding, a float tensor (e.g. the null class's row of the class table). Shape (1, E) fits one
    embedding shared by the batch; (B, E) (e.g. `.expand(B, -1)`) fits one per image, as Mokady et al. do.
    inversion: a precomputed scale-1 pivot on the same grid (otherwise computed here).
    callback: called after each fitted step as (i, t, x̄_{i+1}, x₀).
    """
    check_invertible(sampler)
    if not isinstance(null_cond, Tensor) or not null_cond.is_floating_point():
        raise ValueError(
            "null_cond must be a float embedding tensor (e.g. the null class's embedding, shape (1, E)); "
            "class ids cannot be optimised"
        )
    if inner_steps < 0 or lr <= 0:
        raise ValueError(f"need inner_steps >= 0 and lr > 0, got {inner_steps}, {lr}")
    if inversion is None:
        inversion = ddim_invert(
            model_fn, sampler, x0, num_steps=num_steps, cond=cond, fixed_point_iters=fixed_point_iters
        )
    sampler.set_timesteps(num_steps)
    if not torch.equal(sampler.timesteps, inversion.timesteps):
        raise ValueError("the precomputed inversion lives on a different timestep grid than num_steps gives")

    x, null = inversion.x_T, null_cond
    nulls: list[Tensor] = []
    losses: list[float] = []
    with torch.enable_grad():
        for i, t in enumerate(sampler.timesteps):
            t_batch = t.to(x.device).expand(x.shape[0])
            target = inversion.trajectory[i + 1]
            with torch.no_grad():
                out_cond = model_fn(x, t_batch, cond)  # fixed during this step's optimisation
            null = _fit_null(model_fn, sampler, x, t, out_cond, target, null, scale, inner_steps, lr, tol)
            with torch.no_grad():
                out_uncond = model_fn(x, t_batch, expand_cond(null, x.shape[0]))
                x = sampler.step(cfg_combine(out_cond, out_uncond, scale), t, x).prev_sample
            nulls.append(null)
            losses.append(float((x.float() - target.float()).pow(2).mean()))
            if callback is not None:
                callback(i, t, x, inversion.trajectory[-1])
    return NullInversion(inversion=inversion, null_conds=tuple(nulls), scale=scale, losses=tuple(losses))


__all__ = ["NullInversion", "null_condition_inversion"]

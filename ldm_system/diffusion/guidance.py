"""Classifier-free guidance (Ho & Salimans 2022) around a plain `model_fn(x, t, cond) -> output`.

`cond` is whatever the network takes, with batch first: a LongTensor (B,) of class ids, a float
(B, E) class-embedding tensor, encoder hidden states (B, L, D), a dict of such tensors, or None. The
caller supplies the matching "null" condition (the null class id, its embedding, the empty-caption
states); nothing here knows about classes or captions.

Guidance is applied to the raw model output. Every parameterisation (ε, v, x₀) is affine in the
output with the same coefficients at a given x_t, so guiding ε, v or x₀ gives the same x̂₀.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, Union

import torch
from torch import Tensor

Cond = Union[Tensor, Mapping[str, Tensor], None]
ModelFn = Callable[[Tensor, Tensor, Cond], Tensor]  # (x_t (B, …), t (B,) long, cond) -> output (B, …)


@dataclass(frozen=True, eq=False)
class Guidance:
    """out = u + s·(c − u), with c = model(x, t, cond) and u = model(x, t, null).

    null_cond: one null condition for every step, or a list/tuple with one per sampling step (what
    null-condition inversion produces). Tensors with batch size 1 are broadcast to the batch.
    rescale: φ of Lin et al. 2023, §3.4: pulls the guided output's std back towards the conditional
    one, against over-exposure at high scales (0 = off, 0.7 recommended there).
    """

    scale: float = 1.0
    null_cond: Cond | Sequence[Cond] = None
    rescale: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.scale) or self.scale < 0:
            raise ValueError(f"guidance scale must be a finite number >= 0, got {self.scale}")
        if not 0 <= self.rescale <= 1:
            raise ValueError(f"guidance rescale must lie in [0, 1], got {self.rescale}")

    @property
    def per_step(self) -> bool:
        return isinstance(self.null_cond, (list, tuple))

    def null_at(self, step_index: int) -> Cond:
        if not self.per_step:
            return self.null_cond
        if not 0 <= step_index < len(self.null_cond):
            raise ValueError(f"no null condition for step {step_index}: {len(self.null_cond)} were given")
        return self.null_cond[step_index]


def cfg_combine(out_cond: Tensor, out_uncond: Tensor, scale: float, rescale: float = 0.0) -> Tensor:
    # Ho & Salimans 2022, eq. 6 with s = 1 + w: ε̃ = u + s (c − u)
    guided = out_uncond + scale * (out_cond - out_uncond)
    if rescale > 0:
        # Lin et al. 2023, §3.4: x_rescaled = x_cfg · std(c)/std(x_cfg), then mix with weight φ
        dims = list(range(1, guided.ndim))
        factor = out_cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
        guided = guided * (rescale * factor + (1 - rescale))
    return guided


def expand_cond(cond: Cond, batch: int) -> Cond:
    """Broadcast a batch-1 (or 0-d) null condition to `batch`."""
    if cond is None:
        return None
    if isinstance(cond, Mapping):
        return {k: expand_cond(v, batch) for k, v in cond.items()}
    if cond.ndim == 0:
        return cond.expand(batch)
    return cond.expand(batch, *cond.shape[1:]) if cond.shape[0] == 1 and batch != 1 else cond


def _batchable(a: Cond, b: Cond) -> bool:
    """Can cond and null go through the network as one concatenated batch?"""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_batchable(a[k], b[k]) for k in a)
    return (
        isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype == b.dtype and a.shape[1:] == b.shape[1:]
    )


def _cat(a: Cond, b: Cond) -> Cond:
    if isinstance(a, Mapping):
        return {k: torch.cat([a[k], b[k]]) for k in a}
    return torch.cat([a, b])


def guided_output(
    model_fn: ModelFn, x: Tensor, t: Tensor, cond: Cond, guidance: Guidance | None, step_index: int = 0
) -> Tensor:
    """The (guided) model output at (x, t). One batched network call for cond + null when their types
    allow it (2B rows), two calls otherwise (e.g. ids for cond, a float embedding for null)."""
    if guidance is None or guidance.scale == 1.0:
        return model_fn(x, t, cond)
    null = expand_cond(guidance.null_at(step_index), x.shape[0])
    if guidance.scale == 0.0:
        return model_fn(x, t, null)
    if _batchable(cond, null):
        out_cond, out_uncond = model_fn(torch.cat([x, x]), torch.cat([t, t]), _cat(cond, null)).chunk(2)
    else:
        out_cond, out_uncond = model_fn(x, t, cond), model_fn(x, t, null)
    return cfg_combine(out_cond, out_uncond, guidance.scale, guidance.rescale)


def drop_condition(
    cond: Tensor, null: int | Tensor, prob: float, generator: torch.Generator | None = None
) -> Tensor:
    """Training-time condition dropout for CFG: each row of `cond` becomes `null` with probability `prob`.

    cond: (B,) class ids with `null` the null class id, or (B, …) float conditions with `null` a tensor
    broadcastable to one row (e.g. the empty-caption states (1, L, D)).
    """
    if not 0 <= prob <= 1:
        raise ValueError(f"condition dropout probability must lie in [0, 1], got {prob}")
    drop = torch.rand(cond.shape[0], generator=generator, device="cpu" if generator is None else generator.device)
    drop = (drop < prob).to(cond.device).reshape(-1, *([1] * (cond.ndim - 1)))
    null_t = torch.as_tensor(null, dtype=cond.dtype, device=cond.device)
    return torch.where(drop, null_t, cond)


__all__ = ["Cond", "Guidance", "ModelFn", "cfg_combine", "drop_condition", "expand_cond", "guided_output"]

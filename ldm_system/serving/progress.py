"""A tqdm bar over network evaluations for any `LDMPipeline` call.

The pipeline's methods route every UNet call through `pipe.model_fn`, so counting those calls gives
one uniform progress measure for sampling, inversion (incl. fixed-point and null-condition
optimisation), editing and interpolation, without threading a callback through each diffusion
function. Guided calls batch the conditional and null rows into one evaluation, so a guided
50-step sample still counts 50.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def model_call_progress(pipe, total: int, desc: str, enabled: bool = True) -> Iterator[None]:
    """Count `pipe.model_fn` calls on a bar of `total` (an estimate is fine: the bar is closed at the
    true count). Restores the original `model_fn` on exit, errors included."""
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="eval", leave=False, dynamic_ncols=True)
    inner = pipe.model_fn

    def counted(x, t, cond):
        out = inner(x, t, cond)
        bar.update(1)
        return out

    pipe.model_fn = counted  # instance attribute shadows the method for the duration
    try:
        yield
        bar.total = bar.n  # early-stopped optimisation ends below the estimate: show a full bar
        bar.refresh()
    finally:
        del pipe.model_fn
        bar.close()


def invert_evals(steps: int, fixed_point_iters: int = 0, null_optimization: bool = False, null_inner_steps: int = 10) -> int:
    """Upper bound on the network evaluations of `LDMPipeline.invert`."""
    evals = steps * (1 + fixed_point_iters) + steps  # inversion + reconstruction
    if null_optimization:
        evals += steps * (null_inner_steps + 2)  # per step: cond output, ≤ inner fits, final null output
    return evals


__all__ = ["invert_evals", "model_call_progress"]

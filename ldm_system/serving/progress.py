"""A tqdm bar over sampler steps for any `LDMPipeline` verb, fed by the verb's step callback.

Every verb passes `callback(i, t, x, x̂₀)` down to the diffusion loops (`diffusion/loop.py`,
inversion, null-condition inversion), which call it once per step, so one bar counts sampling,
inversion, editing and interpolation alike. A guided step counts once (cond and null share one
batched call); fixed-point refinements and null-embedding fits count as the step they refine.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from ldm_system.diffusion.loop import StepCallback


@contextmanager
def step_progress(total: int, desc: str, enabled: bool = True) -> Iterator[StepCallback | None]:
    """Yield a step callback that advances a bar of `total` steps (None when disabled)."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)
    try:
        yield lambda i, t, x, x0: bar.update(1)
        bar.refresh()  # tqdm throttles redraws: show the final count before the bar is cleared
    finally:
        bar.close()


def invert_steps(steps: int, null_optimization: bool = False) -> int:
    """Steps `LDMPipeline.invert` reports: inversion, the null fits (if any), reconstruction."""
    return steps * (3 if null_optimization else 2)


__all__ = ["invert_steps", "step_progress"]

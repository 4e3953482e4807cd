"""Which training timesteps a sampler visits, as diffusers defines the three spacings.

Lin et al. 2023, Table 2: "leading" (0, k, 2k, … ; never reaches T−1), "trailing" (T−1, T−1−k, … ;
starts at the last timestep, needed for zero terminal SNR) and "linspace" (rounded evenly spaced
points of [0, T−1]). Rounding is numpy's (half to even) so the integers match diffusers exactly.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

SPACINGS = ("leading", "trailing", "linspace")


def check_num_steps(num_steps: int, num_train_timesteps: int) -> None:
    if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool):
        raise ValueError(f"num_steps must be an int, got {num_steps!r}")
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    if num_steps > num_train_timesteps:
        raise ValueError(
            f"num_steps={num_steps} exceeds num_train_timesteps={num_train_timesteps}: "
            "a sampler cannot visit more timesteps than the model was trained on"
        )


def spaced_timesteps(
    num_train_timesteps: int,
    num_steps: int,
    spacing: str,
    steps_offset: int = 0,
    exclude_zero: bool = False,
) -> Tensor:
    """Descending LongTensor of `num_steps` training timesteps.

    exclude_zero: DPM-Solver's grid. For "leading" and "linspace" it places num_steps + 1 points and
    drops t = 0, because that solver's last update goes to σ = 0 by itself.
    """
    check_num_steps(num_steps, num_train_timesteps)
    T, n = num_train_timesteps, num_steps
    points = n + 1 if exclude_zero else n
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, points).round()[::-1]
    elif spacing == "leading":
        ts = (np.arange(0, points) * (T // points))[::-1] + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)) - 1
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {list(SPACINGS)}")
    if exclude_zero and spacing != "trailing":
        ts = ts[:-1]
    ts = torch.from_numpy(np.ascontiguousarray(ts).astype(np.int64))
    if len(ts) != n or bool((ts[1:] >= ts[:-1]).any()) or int(ts.max()) >= T or int(ts.min()) < 0:
        raise ValueError(
            f"spacing {spacing!r} with num_steps={n}, steps_offset={steps_offset} over {T} training "
            f"timesteps gives an invalid grid {ts.tolist()[:8]}…; use fewer steps or another spacing"
        )
    return ts


__all__ = ["SPACINGS", "check_num_steps", "spaced_timesteps"]

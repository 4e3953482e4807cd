"""A diffusers scheduler config ↔ our `DiffusionConfig` and the sampling grid it implies.

The forward process (betas, T, prediction type, zero terminal SNR) maps onto `diffusion:`; the grid
convention (`timestep_spacing`, `steps_offset`) is a sampling matter and travels next to it, so that
`ldm sample` on an imported or exported folder walks the timesteps the stock pipeline walks.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from autoencoders.diffusers_io import NotRepresentableError
from ldm_system.diffusion.config import DIFFUSERS_BETA_SCHEDULE, DIFFUSERS_PREDICTION_TYPE, DiffusionConfig

SCHEDULER_CONFIG = "scheduler_config.json"


@dataclass(frozen=True)
class SamplingGrid:
    spacing: str = "leading"
    steps_offset: int = 0


def diffusion_from_scheduler(raw: dict, where: str) -> tuple[DiffusionConfig, SamplingGrid]:
    betas = {v: k for k, v in DIFFUSERS_BETA_SCHEDULE.items()}
    preds = {v: k for k, v in DIFFUSERS_PREDICTION_TYPE.items()}
    if raw.get("trained_betas") is not None:
        raise NotRepresentableError(f"{where}: explicit trained_betas; we only represent named beta schedules")
    if raw.get("beta_schedule", "linear") not in betas:
        raise NotRepresentableError(f"{where}: beta_schedule {raw.get('beta_schedule')!r} is not one of {sorted(betas)}")
    if raw.get("prediction_type", "epsilon") not in preds:
        raise NotRepresentableError(f"{where}: prediction_type {raw.get('prediction_type')!r} is not one of {sorted(preds)}")
    dcfg = DiffusionConfig(
        num_train_timesteps=int(raw.get("num_train_timesteps", 1000)),
        beta_schedule=betas[raw.get("beta_schedule", "linear")],
        beta_start=float(raw.get("beta_start", 0.0001)), beta_end=float(raw.get("beta_end", 0.02)),
        zero_terminal_snr=bool(raw.get("rescale_betas_zero_snr", False)),
        prediction_type=preds[raw.get("prediction_type", "epsilon")])
    return dcfg, SamplingGrid(str(raw.get("timestep_spacing", "leading")), int(raw.get("steps_offset", 0)))


def read_scheduler(folder: Path) -> tuple[DiffusionConfig, SamplingGrid]:
    f = folder / SCHEDULER_CONFIG
    if not f.is_file():
        raise FileNotFoundError(f"{folder}: no {SCHEDULER_CONFIG}")
    return diffusion_from_scheduler(json.loads(f.read_text()), str(f))


def write_ddim_scheduler(dcfg: DiffusionConfig, grid: SamplingGrid, folder: Path) -> None:
    """A `DDIMScheduler` with our forward process and grid: what our DDIM sampler computes."""
    from diffusers import DDIMScheduler

    DDIMScheduler(**dcfg.diffusers_scheduler_config(), timestep_spacing=grid.spacing,
                  steps_offset=grid.steps_offset, set_alpha_to_one=True).save_pretrained(str(folder))


__all__ = ["SamplingGrid", "diffusion_from_scheduler", "read_scheduler", "write_ddim_scheduler"]

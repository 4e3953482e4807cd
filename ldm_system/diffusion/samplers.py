"""The sampler registry and its typed config."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Sampler, X0Processing
from .ddim import DDIMSampler
from .ddpm import VARIANCE_TYPES, DDPMSampler
from .dpm_solver import DPMSolverPP2M
from .schedules import NoiseSchedule
from .spacing import SPACINGS, check_num_steps

SAMPLERS: dict[str, type] = {"ddpm": DDPMSampler, "ddim": DDIMSampler, "dpm++2m": DPMSolverPP2M}


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample. Only DDIM reads `eta`, `set_alpha_to_one`; only DDPM reads `variance_type`."""

    name: str = "ddim"  # key of SAMPLERS
    num_steps: int = 50
    spacing: str | None = None  # None: the sampler's diffusers default (leading; linspace for dpm++2m)
    steps_offset: int = 0
    eta: float = 0.0
    set_alpha_to_one: bool = True
    variance_type: str = "fixed_small"
    clip_sample: float | None = None  # off for latents
    thresholding: bool = False
    threshold_ratio: float = 0.995
    threshold_max: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.name!r}; choose one of {sorted(SAMPLERS)}")
        if self.num_steps <= 0:
            raise ValueError(f"num_steps must be positive, got {self.num_steps}")
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise ValueError(f"unknown timestep spacing {self.spacing!r}; choose one of {list(SPACINGS)}")
        if self.eta != 0 and self.name != "ddim":
            raise ValueError(f"eta applies to the ddim sampler only, not {self.name!r}")
        if self.variance_type not in VARIANCE_TYPES:
            raise ValueError(f"unknown variance_type {self.variance_type!r}; choose one of {list(VARIANCE_TYPES)}")


def make_sampler(cfg: SamplerConfig, schedule: NoiseSchedule, prediction: str) -> Sampler:
    """A sampler for `cfg` with its timesteps already set to cfg.num_steps."""
    check_num_steps(cfg.num_steps, schedule.num_train_timesteps)
    common = dict(
        spacing=cfg.spacing,
        steps_offset=cfg.steps_offset,
        x0_processing=X0Processing(cfg.clip_sample, cfg.thresholding, cfg.threshold_ratio, cfg.threshold_max),
    )
    if cfg.name == "ddim":
        sampler = DDIMSampler(schedule, prediction, eta=cfg.eta, set_alpha_to_one=cfg.set_alpha_to_one, **common)
    elif cfg.name == "ddpm":
        sampler = DDPMSampler(schedule, prediction, variance_type=cfg.variance_type, **common)
    else:
        sampler = SAMPLERS[cfg.name](schedule, prediction, **common)
    sampler.set_timesteps(cfg.num_steps)
    return sampler


__all__ = ["SAMPLERS", "SamplerConfig", "make_sampler"]

"""Typed values for the diffusion process (training side) and its mapping to diffusers' names."""
from __future__ import annotations

from dataclasses import dataclass

from .schedules import BETA_SCHEDULES, NoiseSchedule, make_schedule
from .targets import LOSS_WEIGHTINGS, PREDICTION_TYPES

# Our names → diffusers' scheduler config values (for exporting a checkpoint to diffusers).
DIFFUSERS_BETA_SCHEDULE = {"linear": "linear", "scaled-linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
DIFFUSERS_PREDICTION_TYPE = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process and the training objective.

    Defaults are the latent-diffusion ones (Rombach et al. 2022): 1000 steps, scaled-linear betas
    0.00085 → 0.012, ε-prediction, uniform weighting, 10% condition dropout for guidance.
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled-linear"  # key of BETA_SCHEDULES
    beta_start: float = 0.00085
    beta_end: float = 0.012
    zero_terminal_snr: bool = False  # Lin et al. 2023; needs v- or x0-prediction
    prediction_type: str = "eps"  # "eps" | "v" | "x0"
    loss_weighting: str = "uniform"  # "uniform" | "min-snr"
    min_snr_gamma: float = 5.0  # Hang et al. 2023 recommend γ = 5
    offset_noise: float = 0.0  # Guttenberg 2023; ~0.1 when used
    cond_drop_prob: float = 0.1  # probability of training on the null condition (Ho & Salimans 2022)

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be at least 2, got {self.num_train_timesteps}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"unknown beta_schedule {self.beta_schedule!r}; choose one of {sorted(BETA_SCHEDULES)}")
        if self.beta_schedule != "cosine" and not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {self.prediction_type!r}; choose one of {list(PREDICTION_TYPES)}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"unknown loss_weighting {self.loss_weighting!r}; choose one of {list(LOSS_WEIGHTINGS)}")
        if self.min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive, got {self.min_snr_gamma}")
        if self.offset_noise < 0:
            raise ValueError(f"offset_noise must be >= 0, got {self.offset_noise}")
        if not 0 <= self.cond_drop_prob <= 1:
            raise ValueError(f"cond_drop_prob must lie in [0, 1], got {self.cond_drop_prob}")
        if self.zero_terminal_snr and self.prediction_type == "eps":
            # At ᾱ_T = 0, x_T carries no signal and x̂₀ = (x_T − σ ε̂)/α is 0/0 (Lin et al. 2023, §3.2).
            raise ValueError("zero_terminal_snr needs prediction_type 'v' or 'x0': ε-prediction cannot recover x0 at SNR 0")

    def schedule(self) -> NoiseSchedule:
        return make_schedule(
            self.num_train_timesteps, self.beta_schedule, self.beta_start, self.beta_end, self.zero_terminal_snr
        )

    def diffusers_scheduler_config(self) -> dict:
        """A diffusers scheduler config with the same forward process, for `Scheduler.from_config(...)`
        (which skips keys a scheduler does not take, e.g. clip_sample for DPMSolverMultistepScheduler)."""
        return dict(
            num_train_timesteps=self.num_train_timesteps,
            beta_schedule=DIFFUSERS_BETA_SCHEDULE[self.beta_schedule],
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            rescale_betas_zero_snr=self.zero_terminal_snr,
            prediction_type=DIFFUSERS_PREDICTION_TYPE[self.prediction_type],
            clip_sample=False,  # latents have no fixed range
        )


__all__ = ["DIFFUSERS_BETA_SCHEDULE", "DIFFUSERS_PREDICTION_TYPE", "DiffusionConfig"]

"""Diffusion: noise schedules, training targets, samplers (DDPM, DDIM, DPM-Solver++(2M)),
classifier-free guidance, the sampling loop, DDIM / null-condition inversion and editing."""
from .base import Sampler, StepOutput, X0Processing
from .config import DiffusionConfig
from .ddim import DDIMSampler
from .ddpm import DDPMSampler
from .dpm_solver import DPMSolverPP2M
from .editing import class_edit, sdedit, slerp
from .guidance import Guidance, cfg_combine, drop_condition, guided_output
from .inversion import Inversion, ddim_invert, latent_mse, reconstruct
from .loop import denoise, sample
from .null_inversion import NullInversion, null_condition_inversion
from .samplers import SAMPLERS, SamplerConfig, make_sampler
from .schedules import BETA_SCHEDULES, NoiseSchedule, make_schedule
from .spacing import SPACINGS, spaced_timesteps
from .targets import PREDICTION_TYPES, diffusion_loss, min_snr_weight, offset_noise, sample_timesteps

__all__ = [
    "BETA_SCHEDULES", "DDIMSampler", "DDPMSampler", "DPMSolverPP2M", "DiffusionConfig", "Guidance", "Inversion",
    "NoiseSchedule", "NullInversion", "PREDICTION_TYPES", "SAMPLERS", "SPACINGS", "Sampler", "SamplerConfig",
    "StepOutput", "X0Processing", "cfg_combine", "class_edit", "ddim_invert", "denoise", "diffusion_loss",
    "drop_condition", "guided_output", "latent_mse", "make_sampler", "make_schedule", "min_snr_weight",
    "null_condition_inversion", "offset_noise", "reconstruct", "sample", "sample_timesteps", "sdedit",
    "slerp", "spaced_timesteps",
]

"""Variance-preserving noise schedules: betas → ᾱ_t, α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), SNR(t).

Notation (DDPM, Ho et al. 2020): x_t = α_t x_0 + σ_t ε with α_t² + σ_t² = 1, ᾱ_t = ∏_{s≤t} (1 − β_s).
Timesteps are integer indices 0 … T−1 into the tables, as in diffusers.

Tables are float64: 1000 float32 products lose ~1e-5 relative precision in ᾱ near t = T, which the
1/α_t in the x̂_0 formula then amplifies. Betas are *defined* as diffusers defines them (the linear
ramps are built in float32), so the tables match diffusers' to float32 rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

COSINE_S = 0.008  # Nichol & Dhariwal 2021, eq. 17: offset so that β_0 is not vanishingly small
MAX_BETA = 0.999  # Nichol & Dhariwal 2021: clip β_t to avoid a singularity at t = T


def linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """β_t evenly spaced from beta_start to beta_end (Ho et al. 2020, §4)."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32).double()


def scaled_linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """√β_t evenly spaced (the latent-diffusion / Stable Diffusion schedule)."""
    ramp = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32)
    return (ramp**2).double()


def cosine_alpha_bar(u: float) -> float:
    """f(u) = cos²((u + s)/(1 + s) · π/2) for u = t/T ∈ [0, 1] (Nichol & Dhariwal 2021, eq. 17, unnormalised)."""
    return math.cos((u + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2


def cosine_betas(num_train_timesteps: int, beta_start: float = 0.0, beta_end: float = 0.0) -> Tensor:
    """β_t = 1 − ᾱ(t+1)/ᾱ(t), clipped to MAX_BETA; so ᾱ_t = f((t+1)/T)/f(0) (index t is step t+1).

    beta_start / beta_end are accepted for a uniform signature and ignored: the cosine schedule has none.
    """
    T = num_train_timesteps
    betas = [min(1 - cosine_alpha_bar((i + 1) / T) / cosine_alpha_bar(i / T), MAX_BETA) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float64)


BETA_SCHEDULES: dict[str, Callable[[int, float, float], Tensor]] = {
    "linear": linear_betas,
    "scaled-linear": scaled_linear_betas,
    "cosine": cosine_betas,
}


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Shift and scale √ᾱ so that √ᾱ_T = 0 while √ᾱ_0 is unchanged (Lin et al. 2023, Algorithm 1).

    With ᾱ_T = 0 the last training step sees pure noise, which is what sampling starts from.
    """
    sqrt_ab = torch.cumprod(1 - betas.double(), dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])  # undo the cumulative product
    return 1 - alphas


def _gather(table: Tensor, t: Tensor, ndim: int) -> Tensor:
    """table[t] for t: (B,) reshaped to (B, 1, …, 1), to broadcast against an ndim-D (B, …) tensor."""
    t = torch.as_tensor(t).to(table.device).long().reshape(-1)
    return table[t].reshape(-1, *([1] * (ndim - 1)))


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """The training-time forward process: ᾱ_t for t = 0 … T−1 (float64 tables on the CPU)."""

    betas: Tensor
    alphas_cumprod: Tensor

    @classmethod
    def from_betas(cls, betas: Tensor) -> "NoiseSchedule":
        betas = betas.double().cpu()
        if betas.ndim != 1 or len(betas) == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if bool(((betas <= 0) | (betas > 1)).any()):
            raise ValueError("betas must lie in (0, 1]")
        return cls(betas=betas, alphas_cumprod=torch.cumprod(1 - betas, dim=0))

    @property
    def num_train_timesteps(self) -> int:
        return len(self.betas)

    def alpha_bar(self, t: int) -> float:
        return float(self.alphas_cumprod[int(t)])

    def snr(self, t: Tensor | int) -> Tensor:
        """SNR(t) = α_t² / σ_t² = ᾱ_t / (1 − ᾱ_t) (Kingma et al. 2021, eq. 1); 0 at a zero-SNR end."""
        ab = self.alphas_cumprod[torch.as_tensor(t).long().cpu()]
        return ab / (1 - ab)

    def alpha_sigma(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(α_t, σ_t) for a batch of timesteps (B,), shaped to broadcast against `like` (B, …)."""
        ab = _gather(self.alphas_cumprod, t, like.ndim)  # float64 until the final cast
        cast = dict(device=like.device, dtype=like.dtype)
        return ab.sqrt().to(**cast), (1 - ab).sqrt().to(**cast)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """q(x_t | x_0): x_t = α_t x_0 + σ_t ε (DDPM eq. 4), t: (B,) integer timesteps."""
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * x0 + sigma * noise

    def velocity(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """v = α_t ε − σ_t x_0 (Salimans & Ho 2022, §4)."""
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * noise - sigma * x0


def make_schedule(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "scaled-linear",
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    zero_terminal_snr: bool = False,
) -> NoiseSchedule:
    """Build a schedule by name (see BETA_SCHEDULES), optionally rescaled to zero terminal SNR."""
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be at least 2, got {num_train_timesteps}")
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}; choose one of {sorted(BETA_SCHEDULES)}")
    betas = BETA_SCHEDULES[beta_schedule](num_train_timesteps, beta_start, beta_end)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return NoiseSchedule.from_betas(betas)


__all__ = [
    "BETA_SCHEDULES",
    "NoiseSchedule",
    "cosine_alpha_bar",
    "cosine_betas",
    "linear_betas",
    "make_schedule",
    "rescale_zero_terminal_snr",
    "scaled_linear_betas",
]

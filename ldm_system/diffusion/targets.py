"""What the network predicts (ε, v or x₀), conversions between them, and the training loss.

With x_t = α x₀ + σ ε (α² + σ² = 1) every parameterisation is affine in the model output m for a
fixed x_t, so each conversion is two coefficients: x̂₀ = a·x_t + b·m and ε̂ = c·x_t + d·m.
Classifier-free guidance and DDIM inversion rely on this affinity.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from .schedules import NoiseSchedule

Scalar = Union[float, Tensor]  # a Python float or a tensor broadcasting against (B, C, H, W)

PREDICTION_TYPES = ("eps", "v", "x0")
LOSS_WEIGHTINGS = ("uniform", "min-snr")


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type {prediction!r}; choose one of {list(PREDICTION_TYPES)}")
    return prediction


def x0_coefficients(prediction: str, alpha: Scalar, sigma: Scalar) -> tuple[Scalar, Scalar]:
    """(a, b) with x̂₀ = a·x_t + b·m."""
    if check_prediction(prediction) == "eps":
        return 1 / alpha, -sigma / alpha  # x₀ = (x_t − σ ε)/α
    if prediction == "v":
        return alpha, -sigma  # Salimans & Ho 2022: x₀ = α x_t − σ v
    return 0.0, 1.0


def eps_coefficients(prediction: str, alpha: Scalar, sigma: Scalar) -> tuple[Scalar, Scalar]:
    """(c, d) with ε̂ = c·x_t + d·m."""
    if check_prediction(prediction) == "eps":
        return 0.0, 1.0
    if prediction == "v":
        return sigma, alpha  # ε = σ x_t + α v
    return 1 / sigma, -alpha / sigma  # ε = (x_t − α x₀)/σ


def predicted_x0(prediction: str, model_output: Tensor, x_t: Tensor, alpha: Scalar, sigma: Scalar) -> Tensor:
    a, b = x0_coefficients(prediction, alpha, sigma)
    return a * x_t + b * model_output


def predicted_eps(prediction: str, model_output: Tensor, x_t: Tensor, alpha: Scalar, sigma: Scalar) -> Tensor:
    c, d = eps_coefficients(prediction, alpha, sigma)
    return c * x_t + d * model_output


def output_from(prediction: str, x0: Tensor, eps: Tensor, alpha: Scalar, sigma: Scalar) -> Tensor:
    """The model output that corresponds to (x₀, ε): also the regression target in training."""
    if check_prediction(prediction) == "eps":
        return eps
    if prediction == "v":
        return alpha * eps - sigma * x0  # Salimans & Ho 2022: v = α ε − σ x₀
    return x0


def convert_output(src: str, dst: str, model_output: Tensor, x_t: Tensor, alpha: Scalar, sigma: Scalar) -> Tensor:
    """Re-express a model output of type `src` as type `dst` at the same (x_t, t)."""
    x0 = predicted_x0(src, model_output, x_t, alpha, sigma)
    eps = predicted_eps(src, model_output, x_t, alpha, sigma)
    return output_from(dst, x0, eps, alpha, sigma)


def min_snr_weight(snr: Tensor, prediction: str, gamma: float = 5.0) -> Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023, eq. 8 / Table 1), per parameterisation.

    The target weight in x₀-space is min(SNR, γ). An ε-error equals √SNR times the x₀-error and a
    v-error equals √(SNR + 1) times it (since 1/σ² = 1 + SNR), so:
        x0:  min(SNR, γ)    eps:  min(SNR, γ)/SNR = min(1, γ/SNR)    v:  min(SNR, γ)/(SNR + 1)
    The ε form is written as min(1, γ/SNR) so that it is 1, not 0/0, at a zero-SNR step. (The v weight
    is 0 there: the x₀-space error is unidentifiable from pure noise.)
    """
    if gamma <= 0:
        raise ValueError(f"min-SNR gamma must be positive, got {gamma}")
    snr = snr.double()
    clipped = torch.clamp(snr, max=gamma)
    if check_prediction(prediction) == "x0":
        return clipped
    if prediction == "eps":
        return torch.clamp(gamma / snr, max=1.0)
    return clipped / (snr + 1)


def diffusion_loss(
    model_output: Tensor,
    x0: Tensor,
    noise: Tensor,
    t: Tensor,
    schedule: NoiseSchedule,
    prediction: str,
    weighting: str = "uniform",
    gamma: float = 5.0,
) -> Tensor:
    """Per-sample weighted MSE (B,) between the model output and its target at x_t = α_t x₀ + σ_t ε."""
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {list(LOSS_WEIGHTINGS)}")
    alpha, sigma = schedule.alpha_sigma(t, x0.float())
    target = output_from(prediction, x0.float(), noise.float(), alpha, sigma)
    loss = (model_output.float() - target).pow(2).flatten(1).mean(dim=1)  # (B,)
    if weighting == "min-snr":
        loss = loss * min_snr_weight(schedule.snr(t.cpu()), prediction, gamma).to(loss)
    return loss


def offset_noise(x0: Tensor, strength: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """ε + strength · ε_c with ε_c ~ N(0, 1) of shape (B, C, 1, 1) (offset noise, Guttenberg 2023).

    The per-channel constant lets the model change an image's mean brightness, which plain noise at
    ᾱ_T > 0 never fully hides. strength = 0 returns plain Gaussian noise.
    """
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if strength:
        shift = torch.randn(x0.shape[:2], generator=generator, device=x0.device, dtype=x0.dtype)
        noise = noise + strength * shift.reshape(*x0.shape[:2], *([1] * (x0.ndim - 2)))
    return noise


def sample_timesteps(
    batch: int, schedule: NoiseSchedule, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """t ~ U{0, …, T−1}, (B,) long (DDPM Algorithm 1)."""
    t = torch.randint(0, schedule.num_train_timesteps, (batch,), generator=generator)
    return t.to(device) if device is not None else t


__all__ = [
    "LOSS_WEIGHTINGS",
    "PREDICTION_TYPES",
    "check_prediction",
    "convert_output",
    "diffusion_loss",
    "eps_coefficients",
    "min_snr_weight",
    "offset_noise",
    "output_from",
    "predicted_eps",
    "predicted_x0",
    "sample_timesteps",
    "x0_coefficients",
]

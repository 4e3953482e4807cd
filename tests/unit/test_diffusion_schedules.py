"""Golden values for the noise schedules, SNR and timestep spacing, plus parity with diffusers' tables."""
import math

import pytest
import torch

from ldm_system.diffusion.config import DIFFUSERS_BETA_SCHEDULE, DiffusionConfig
from ldm_system.diffusion.schedules import (
    COSINE_S,
    NoiseSchedule,
    cosine_alpha_bar,
    make_schedule,
    rescale_zero_terminal_snr,
)
from ldm_system.diffusion.spacing import spaced_timesteps

SCHEDULES = [("linear", 1e-4, 0.02), ("scaled-linear", 0.00085, 0.012), ("cosine", 0.0, 0.0)]


def test_linear_betas_endpoints_and_step():
    s = make_schedule(1000, "linear", 1e-4, 0.02)
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert s.betas[-1].item() == pytest.approx(0.02, rel=1e-6)
    assert (s.betas[1] - s.betas[0]).item() == pytest.approx((0.02 - 1e-4) / 999, rel=1e-4)


def test_scaled_linear_betas_are_squares_of_a_ramp():
    s = make_schedule(1000, "scaled-linear", 0.00085, 0.012)
    assert s.betas[0].item() == pytest.approx(0.00085, rel=1e-6)
    assert s.betas[-1].item() == pytest.approx(0.012, rel=1e-6)
    mid = (0.00085**0.5 + (0.012**0.5 - 0.00085**0.5) * 500 / 999) ** 2
    assert s.betas[500].item() == pytest.approx(mid, rel=1e-6)


def test_alphas_cumprod_is_running_product():
    s = make_schedule(10, "linear", 0.1, 0.5)
    betas = [0.1 + (0.5 - 0.1) * i / 9 for i in range(10)]
    expect = 1.0
    for i, b in enumerate(betas):
        expect *= 1 - b
        assert s.alphas_cumprod[i].item() == pytest.approx(expect, rel=1e-6)


@pytest.mark.parametrize("t", [0, 100, 500, 900])
def test_cosine_alpha_bar_formula(t):
    # Nichol & Dhariwal eq. 17: ᾱ(u) = f(u)/f(0), f(u) = cos²((u + s)/(1 + s)·π/2); table index t is u = (t+1)/T
    T = 1000
    s = make_schedule(T, "cosine")
    f = lambda u: math.cos((u + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2  # noqa: E731
    assert s.alphas_cumprod[t].item() == pytest.approx(f((t + 1) / T) / f(0), rel=1e-9)
    assert cosine_alpha_bar(0.5) == pytest.approx(f(0.5))


def test_cosine_betas_are_capped():
    s = make_schedule(1000, "cosine")
    assert s.betas.max().item() == pytest.approx(0.999)


@pytest.mark.parametrize("name,start,end", SCHEDULES)
def test_zero_terminal_snr(name, start, end):
    plain = make_schedule(1000, name, start, end)
    zero = make_schedule(1000, name, start, end, zero_terminal_snr=True)
    assert zero.alphas_cumprod[-1].item() == 0.0
    assert zero.snr(999).item() == 0.0
    assert zero.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item(), rel=1e-12)
    assert bool((zero.alphas_cumprod[1:] < zero.alphas_cumprod[:-1]).all())  # still strictly decreasing


def test_zero_snr_rescale_is_affine_in_sqrt_alpha_bar():
    betas = torch.linspace(0.01, 0.2, 20, dtype=torch.float64)
    old = torch.cumprod(1 - betas, 0).sqrt()
    new = torch.cumprod(1 - rescale_zero_terminal_snr(betas), 0).sqrt()
    expect = (old - old[-1]) * old[0] / (old[0] - old[-1])  # Lin et al. 2023, Algorithm 1
    torch.testing.assert_close(new, expect, atol=1e-12, rtol=0)


def test_snr_matches_alphas_cumprod():
    s = make_schedule()
    t = torch.tensor([0, 10, 500, 999])
    ab = s.alphas_cumprod[t]
    torch.testing.assert_close(s.snr(t), ab / (1 - ab))
    alpha, sigma = s.alpha_sigma(t, torch.zeros(4, 3, dtype=torch.float64))
    torch.testing.assert_close((alpha**2 / sigma**2).flatten(), ab / (1 - ab))
    torch.testing.assert_close((alpha**2 + sigma**2).flatten(), torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("name,start,end", SCHEDULES)
@pytest.mark.parametrize("zero_snr", [False, True])
def test_schedule_parity_with_diffusers(name, start, end, zero_snr):
    from diffusers import DDPMScheduler

    ours = make_schedule(1000, name, start, end, zero_snr)
    theirs = DDPMScheduler(
        beta_schedule=DIFFUSERS_BETA_SCHEDULE[name], beta_start=start or 1e-4, beta_end=end or 0.02,
        rescale_betas_zero_snr=zero_snr,
    )
    # diffusers keeps float32 tables; ours are float64, so agreement is to float32 rounding.
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod.double(), atol=1e-6, rtol=5e-5)
    torch.testing.assert_close(ours.betas, theirs.betas.double(), atol=1e-5, rtol=1e-4)


def test_add_noise_parity_with_diffusers():
    from diffusers import DDIMScheduler, DDPMScheduler

    ours = make_schedule(1000, "scaled-linear", 0.00085, 0.012)
    x0, noise = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    t = torch.tensor([0, 17, 500, 999])
    for cls in (DDPMScheduler, DDIMScheduler):
        theirs = cls(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(ours.velocity(x0, noise, t), theirs.get_velocity(x0, noise, t), atol=2e-6, rtol=1e-5)


def test_spacing_golden_values():
    assert spaced_timesteps(1000, 4, "leading").tolist() == [750, 500, 250, 0]
    assert spaced_timesteps(1000, 4, "leading", steps_offset=1).tolist() == [751, 501, 251, 1]
    assert spaced_timesteps(1000, 4, "trailing").tolist() == [999, 749, 499, 249]
    assert spaced_timesteps(1000, 4, "linspace").tolist() == [999, 666, 333, 0]
    # DPM-Solver's grid: n + 1 points with t = 0 dropped
    assert spaced_timesteps(1000, 4, "linspace", exclude_zero=True).tolist() == [999, 749, 500, 250]
    assert spaced_timesteps(1000, 4, "leading", exclude_zero=True).tolist() == [800, 600, 400, 200]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 7, 50, 1000])
def test_spacing_parity_with_diffusers(spacing, n):
    from diffusers import DDIMScheduler

    theirs = DDIMScheduler(timestep_spacing=spacing)
    theirs.set_timesteps(n)
    assert spaced_timesteps(1000, n, spacing).tolist() == theirs.timesteps.tolist()


@pytest.mark.parametrize("n", [0, -3])
def test_nonpositive_steps_rejected(n):
    with pytest.raises(ValueError, match="must be positive"):
        spaced_timesteps(1000, n, "leading")


def test_too_many_steps_rejected():
    with pytest.raises(ValueError, match="exceeds num_train_timesteps"):
        spaced_timesteps(1000, 1001, "trailing")


def test_unknown_names_rejected():
    with pytest.raises(ValueError, match="unknown timestep spacing 'middle'"):
        spaced_timesteps(1000, 10, "middle")
    with pytest.raises(ValueError, match="unknown beta_schedule 'sigmoid'"):
        make_schedule(1000, "sigmoid")
    with pytest.raises(ValueError, match="betas must lie"):
        NoiseSchedule.from_betas(torch.tensor([0.1, 1.5]))


def test_diffusion_config_validation_and_schedule():
    cfg = DiffusionConfig(num_train_timesteps=100, beta_schedule="linear", beta_start=1e-3, beta_end=0.02)
    assert cfg.schedule().num_train_timesteps == 100
    assert cfg.diffusers_scheduler_config()["beta_schedule"] == "linear"
    with pytest.raises(ValueError, match="unknown prediction_type 'score'"):
        DiffusionConfig(prediction_type="score")
    with pytest.raises(ValueError, match="unknown loss_weighting"):
        DiffusionConfig(loss_weighting="p2")
    with pytest.raises(ValueError, match="zero_terminal_snr needs prediction_type"):
        DiffusionConfig(zero_terminal_snr=True, prediction_type="eps")
    with pytest.raises(ValueError, match="cond_drop_prob"):
        DiffusionConfig(cond_drop_prob=1.5)
    with pytest.raises(Exception):  # frozen
        cfg.prediction_type = "v"  # type: ignore[misc]

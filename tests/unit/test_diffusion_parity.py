"""Step-by-step parity of our samplers with diffusers' schedulers (the trusted peer).

Both run in lockstep from the same x_T on the same deterministic fake model, with equally seeded
generators for the stochastic samplers. Tolerance is relative to the sample's magnitude: 1e-5 for the
linear schedules; 2e-4 for cosine, whose last β is capped at 0.999 and whose ᾱ_T ≈ 2e-9 makes x̂₀ at
t = T−1 sensitive to diffusers' float32 tables (ours are float64).
"""
import itertools
import warnings

import pytest
import torch

from ldm_system.diffusion import DDIMSampler, DDPMSampler, DPMSolverPP2M, X0Processing, make_schedule
from ldm_system.diffusion.config import DIFFUSERS_BETA_SCHEDULE, DIFFUSERS_PREDICTION_TYPE

warnings.filterwarnings("ignore", category=FutureWarning)

SCHEDULES = {"linear": (1e-4, 0.02), "scaled-linear": (0.00085, 0.012), "cosine": (1e-4, 0.02)}
TOL = {"linear": 1e-5, "scaled-linear": 1e-5, "cosine": 2e-4}
KINDS = ["ddpm", "ddim", "ddim-eta", "dpm++2m"]


def fake_model(x, t):
    return 0.1 * x + torch.sin(torch.as_tensor(t, dtype=torch.float32) / 100.0) + 0.05 * torch.cos(x)


def _pair(kind, schedule, zero_snr, prediction, spacing, ours_kw=None, theirs_kw=None):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    start, end = SCHEDULES[schedule]
    s = make_schedule(1000, schedule, start, end, zero_snr)
    common = dict(
        beta_schedule=DIFFUSERS_BETA_SCHEDULE[schedule], beta_start=start, beta_end=end,
        rescale_betas_zero_snr=zero_snr, prediction_type=DIFFUSERS_PREDICTION_TYPE[prediction],
        timestep_spacing=spacing, **(theirs_kw or {}),
    )
    ours_kw = ours_kw or {}
    if kind == "ddpm":
        return DDPMSampler(s, prediction, spacing=spacing, **ours_kw), DDPMScheduler(clip_sample=False, **common), {}
    if kind.startswith("ddim"):
        eta = 0.7 if kind == "ddim-eta" else 0.0
        ours = DDIMSampler(s, prediction, spacing=spacing, eta=eta, **ours_kw)
        return ours, DDIMScheduler(clip_sample=False, **common), {"eta": eta}
    return DPMSolverPP2M(s, prediction, spacing=spacing, **ours_kw), DPMSolverMultistepScheduler(**common), {}


def _run_lockstep(ours, theirs, step_kw, n, tol):
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    g_ours, g_theirs = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for t in ours.timesteps:
        x = ours.step(fake_model(x, t), t, x, generator=g_ours).prev_sample
        y = theirs.step(fake_model(y, t), t, y, generator=g_theirs, **step_kw).prev_sample
        scale = max(1.0, y.abs().max().item())
        assert (x - y).abs().max().item() <= tol * scale, f"diverged at t={int(t)}"
    return x


CASES = [
    c
    for c in itertools.product(KINDS, SCHEDULES, [False, True], ["eps", "v", "x0"], ["leading", "trailing", "linspace"])
    if not (c[2] and c[3] == "eps")  # ε-prediction is undefined at ᾱ_T = 0 (trailing/linspace visit T−1)
]


@pytest.mark.parametrize("kind,schedule,zero_snr,prediction,spacing", CASES)
def test_sampler_parity(kind, schedule, zero_snr, prediction, spacing):
    ours, theirs, step_kw = _pair(kind, schedule, zero_snr, prediction, spacing)
    _run_lockstep(ours, theirs, step_kw, 10, TOL[schedule])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_sampler_parity_uneven_step_count(kind, spacing):
    # 7 does not divide 1000: exercises DDIM's fixed-stride previous timestep and the DPM grid rounding
    ours, theirs, step_kw = _pair(kind, "scaled-linear", False, "eps", spacing)
    _run_lockstep(ours, theirs, step_kw, 7, 1e-5)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_parity_with_steps_offset(kind):
    ours, theirs, step_kw = _pair(
        kind, "scaled-linear", False, "eps", "leading", ours_kw={"steps_offset": 1}, theirs_kw={"steps_offset": 1}
    )
    _run_lockstep(ours, theirs, step_kw, 10, 1e-5)


def test_ddpm_fixed_large_parity():
    ours, theirs, _ = _pair(
        "ddpm", "linear", False, "eps", "leading", ours_kw={"variance_type": "fixed_large"},
        theirs_kw={"variance_type": "fixed_large"},
    )
    _run_lockstep(ours, theirs, {}, 10, 1e-5)


def test_ddim_final_alpha_parity():
    ours, theirs, step_kw = _pair(
        "ddim", "scaled-linear", False, "v", "leading", ours_kw={"set_alpha_to_one": False},
        theirs_kw={"set_alpha_to_one": False},
    )
    _run_lockstep(ours, theirs, step_kw, 10, 1e-5)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_clip_sample_parity(kind):
    from diffusers import DDIMScheduler, DDPMScheduler

    s = make_schedule(1000, "linear", 1e-4, 0.02)
    cls, ours_cls = (DDPMScheduler, DDPMSampler) if kind == "ddpm" else (DDIMScheduler, DDIMSampler)
    theirs = cls(beta_schedule="linear", clip_sample=True, clip_sample_range=1.0)
    ours = ours_cls(s, "eps", x0_processing=X0Processing(clip_sample=1.0))
    _run_lockstep(ours, theirs, {}, 10, 1e-5)


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "dpm++2m"])
def test_dynamic_thresholding_parity(kind):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    s = make_schedule(1000, "linear", 1e-4, 0.02)
    proc = X0Processing(thresholding=True, threshold_ratio=0.9, threshold_max=1.5)
    peer_kw = dict(beta_schedule="linear", thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    if kind == "ddpm":
        ours, theirs = DDPMSampler(s, "eps", x0_processing=proc), DDPMScheduler(**peer_kw)
    elif kind == "ddim":
        ours, theirs = DDIMSampler(s, "eps", x0_processing=proc), DDIMScheduler(**peer_kw)
    else:
        ours, theirs = DPMSolverPP2M(s, "eps", x0_processing=proc), DPMSolverMultistepScheduler(**peer_kw)
    _run_lockstep(ours, theirs, {}, 10, 1e-5)

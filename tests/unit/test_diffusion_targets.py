"""Prediction-type identities, min-SNR weights, the training loss, offset noise and CFG helpers."""
import math

import pytest
import torch

from ldm_system.diffusion.guidance import Guidance, cfg_combine, drop_condition, guided_output
from ldm_system.diffusion.schedules import make_schedule
from ldm_system.diffusion.targets import (
    PREDICTION_TYPES,
    convert_output,
    diffusion_loss,
    min_snr_weight,
    offset_noise,
    output_from,
    predicted_eps,
    predicted_x0,
)


def _point(seed=0, t=300):
    g = torch.Generator().manual_seed(seed)
    s = make_schedule()
    x0, eps = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    tt = torch.full((3,), t)
    alpha, sigma = s.alpha_sigma(tt, x0)
    return s, x0, eps, tt, alpha, sigma, alpha * x0 + sigma * eps


def test_v_target_identities():
    # Salimans & Ho 2022: v = α ε − σ x0, x0 = α x_t − σ v, ε = σ x_t + α v
    _, x0, eps, _, alpha, sigma, x_t = _point()
    v = output_from("v", x0, eps, alpha, sigma)
    torch.testing.assert_close(v, alpha * eps - sigma * x0)
    torch.testing.assert_close(alpha * x_t - sigma * v, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sigma * x_t + alpha * v, eps, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_each_parameterisation_recovers_x0_and_eps(prediction):
    _, x0, eps, _, alpha, sigma, x_t = _point(t=600)
    out = output_from(prediction, x0, eps, alpha, sigma)
    torch.testing.assert_close(predicted_x0(prediction, out, x_t, alpha, sigma), x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(predicted_eps(prediction, out, x_t, alpha, sigma), eps, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("src", PREDICTION_TYPES)
@pytest.mark.parametrize("dst", PREDICTION_TYPES)
def test_conversions_round_trip(src, dst):
    _, x0, eps, _, alpha, sigma, x_t = _point(t=450)
    out = output_from(src, x0, eps, alpha, sigma)
    there = convert_output(src, dst, out, x_t, alpha, sigma)
    torch.testing.assert_close(there, output_from(dst, x0, eps, alpha, sigma), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(convert_output(dst, src, there, x_t, alpha, sigma), out, atol=1e-5, rtol=1e-5)


def test_min_snr_weights_hand_computed():
    snr = torch.tensor([0.0, 0.5, 5.0, 20.0], dtype=torch.float64)
    g = 5.0
    torch.testing.assert_close(min_snr_weight(snr, "x0", g), torch.tensor([0.0, 0.5, 5.0, 5.0], dtype=torch.float64))
    torch.testing.assert_close(min_snr_weight(snr, "eps", g), torch.tensor([1.0, 1.0, 1.0, 0.25], dtype=torch.float64))
    torch.testing.assert_close(
        min_snr_weight(snr, "v", g), torch.tensor([0.0, 0.5 / 1.5, 5.0 / 6.0, 5.0 / 21.0], dtype=torch.float64)
    )


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_min_snr_weights_equalise_x0_space_error(prediction):
    # The weighted loss of a given x0 error must equal min(SNR, γ)·‖x0 error‖² for every parameterisation.
    s, x0, eps, t, alpha, sigma, x_t = _point(t=200)
    x0_err = 0.1 * torch.randn_like(x0)
    x0_hat = x0 + x0_err
    eps_hat = (x_t - alpha * x0_hat) / sigma
    out = output_from(prediction, x0_hat, eps_hat, alpha, sigma)
    loss = diffusion_loss(out, x0, eps, t, s, prediction, weighting="min-snr", gamma=5.0)
    snr = s.snr(t).float()
    expect = torch.clamp(snr, max=5.0) * x0_err.pow(2).flatten(1).mean(1)
    torch.testing.assert_close(loss, expect, atol=1e-6, rtol=1e-3)


def test_diffusion_loss_uniform_is_per_sample_mse():
    s, x0, eps, t, *_ = _point()
    out = torch.randn_like(x0)
    loss = diffusion_loss(out, x0, eps, t, s, "eps")
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, (out - eps).pow(2).flatten(1).mean(1))
    with pytest.raises(ValueError, match="unknown loss weighting"):
        diffusion_loss(out, x0, eps, t, s, "eps", weighting="p2")
    with pytest.raises(ValueError, match="unknown prediction type"):
        diffusion_loss(out, x0, eps, t, s, "score")


def test_offset_noise_adds_a_per_channel_constant():
    x0 = torch.zeros(2, 3, 4, 4)
    plain = offset_noise(x0, 0.0, torch.Generator().manual_seed(1))
    shifted = offset_noise(x0, 0.5, torch.Generator().manual_seed(1))
    diff = shifted - plain
    torch.testing.assert_close(diff, diff[:, :, :1, :1].expand_as(diff))
    assert diff.abs().sum() > 0


def test_cfg_combine_and_guided_output_batching():
    calls = []

    def model_fn(x, t, cond):
        calls.append(x.shape[0])
        return x * cond.float().reshape(-1, 1, 1, 1) + t.float().reshape(-1, 1, 1, 1)

    x, t = torch.randn(2, 1, 2, 2), torch.tensor([5, 5])
    cond, null = torch.tensor([1, 2]), torch.tensor([7])
    out = guided_output(model_fn, x, t, cond, Guidance(scale=3.0, null_cond=null))
    assert calls == [4]  # one batched call of 2B rows
    c, u = model_fn(x, t, cond), model_fn(x, t, null.expand(2))
    torch.testing.assert_close(out, u + 3.0 * (c - u))
    calls.clear()
    guided_output(model_fn, x, t, cond, Guidance(scale=3.0, null_cond=torch.tensor([[0.5]])))
    assert calls == [2, 2]  # ids vs float embedding: two calls
    calls.clear()
    torch.testing.assert_close(guided_output(model_fn, x, t, cond, Guidance(1.0, null)), c)
    assert calls == [2]
    assert torch.equal(cfg_combine(c, u, 0.0), u)


def test_cfg_rescale_matches_conditional_std():
    c, u = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    full = cfg_combine(c, u, 7.5, rescale=1.0)
    torch.testing.assert_close(full.flatten(1).std(1), c.flatten(1).std(1))


def test_drop_condition():
    ids = torch.arange(1000) % 10
    dropped = drop_condition(ids, 10, 0.3, torch.Generator().manual_seed(0))
    frac = (dropped == 10).float().mean().item()
    assert math.isclose(frac, 0.3, abs_tol=0.05)
    kept = dropped != 10
    assert torch.equal(dropped[kept], ids[kept])
    states = torch.randn(4, 3, 2)
    assert torch.equal(drop_condition(states, torch.zeros(1, 3, 2), 1.0), torch.zeros(4, 3, 2))
    assert torch.equal(drop_condition(states, torch.zeros(1, 3, 2), 0.0), states)


def test_guidance_validation():
    with pytest.raises(ValueError, match="guidance scale"):
        Guidance(scale=-1.0)
    with pytest.raises(ValueError, match="no null condition for step 3"):
        Guidance(2.0, null_cond=[torch.zeros(1, 2)] * 3).null_at(3)

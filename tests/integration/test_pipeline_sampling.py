"""Sampling claims on the small trained model: determinism and DPM-Solver++ vs DDIM accuracy."""
import torch

from ldm_system.diffusion.loop import sample


def test_ddim_eta0_same_seed_is_bitwise_deterministic(serving_pipe):
    kw = dict(classes=["Sneaker", 3], sampler="ddim", steps=10, eta=0.0, guidance=3.0)
    a = serving_pipe.sample(2, seed=7, **kw)
    b = serving_pipe.sample(2, seed=7, **kw)
    c = serving_pipe.sample(2, seed=8, **kw)
    assert a.shape == (2, 1, 32, 32)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.1  # the seed really drives the noise


def test_stochastic_samplers_are_reproducible_from_the_seed(serving_pipe):
    for name, eta in (("ddpm", 0.0), ("ddim", 1.0)):
        a = serving_pipe.sample(2, classes=[0, 1], sampler=name, steps=8, eta=eta, seed=3)
        b = serving_pipe.sample(2, classes=[0, 1], sampler=name, steps=8, eta=eta, seed=3)
        assert torch.equal(a, b), name


def _solve(pipe, name: str, steps: int, x_T: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    return sample(pipe.model_fn, pipe._sampler(name, steps), x_T.shape, num_steps=steps, cond=cond, x_T=x_T)


def test_dpm_solver_20_lands_near_ddim_50_from_the_same_noise(serving_pipe):
    """Both integrate the same probability-flow ODE from the same x_T (class-conditional, no guidance).

    Tolerance: relative latent MSE ‖z_dpm20 − z_ddim50‖² / ‖z_ddim50‖² < 2 % (measured ≈ 0.6 %). The
    second-order solver is also *more* accurate than DDIM at equal steps, against a DDIM-100 reference
    (measured: MSE ≈ 0.002 vs ≈ 0.017, and DDIM-50 itself ≈ 0.0015; asserted with a 3x margin).
    """
    pipe = serving_pipe
    x_T = torch.randn(pipe.latent_shape(4), generator=torch.Generator().manual_seed(0))
    cond = pipe.conditioning.class_ids([0, 3, 5, 8], 4)
    ddim50 = _solve(pipe, "ddim", 50, x_T, cond)
    dpm20 = _solve(pipe, "dpm++2m", 20, x_T, cond)
    ddim20 = _solve(pipe, "ddim", 20, x_T, cond)
    ref = _solve(pipe, "ddim", 100, x_T, cond)

    rel = (dpm20 - ddim50).pow(2).mean() / ddim50.pow(2).mean()
    assert rel < 0.02, f"relative MSE DPM++20 vs DDIM50 = {rel:.4f}"
    err_dpm20 = (dpm20 - ref).pow(2).mean()
    err_ddim20 = (ddim20 - ref).pow(2).mean()
    assert 3 * err_dpm20 < err_ddim20, f"DPM++20 {err_dpm20:.2e} vs DDIM20 {err_ddim20:.2e} (ref DDIM100)"
    # decoded images agree too (on [0, 1], the pipeline's own decode)
    img_a, img_b = pipe.codec.decode(dpm20).clamp(-1, 1), pipe.codec.decode(ddim50).clamp(-1, 1)
    assert ((img_a - img_b) / 2).abs().mean() < 0.03

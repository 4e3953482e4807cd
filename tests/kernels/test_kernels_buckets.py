"""Our Triton attention on non-square latents (aspect-ratio buckets), under TRITON_INTERPRET=1: the
kernels' forward and backward against torch SDPA for the sequence lengths of non-square latent grids,
and a text UNet (self- and cross-attention) through `Denoiser(attention="triton")` on such latents.

A bucket changes only the token count N = h * w that attention sees (15, 60, 64, ... instead of a
square's 16 or 64); the kernels mask the ragged last tile, so every N must match SDPA."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import kernels.autograd_fn as autograd_fn
from attention_cases import assert_close_scaled, make_inputs, triton_run
from ldm_system.models.unet import Denoiser, UNetConfig

GRIDS = [(6, 10), (10, 6), (4, 16), (3, 5)]  # (h, w) latent grids of non-square buckets


def sdpa_grads(q, k, v, grad_out, scale):
    q, k, v = (t.float().requires_grad_() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    return out.detach(), torch.autograd.grad(out, (q, k, v), grad_out.float())


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("n_text", [None, 77])  # self-attention over the grid; cross-attention to 77 text tokens
def test_kernels_match_sdpa_on_bucket_sequence_lengths(grid, n_text):
    n = grid[0] * grid[1]
    q, k, v, grad_out = make_inputs(2, 2, n, n_text or n, 40, torch.float32, seed=n)
    out, _, grads = triton_run(q, k, v, grad_out, False, 40**-0.5)
    ref_out, ref_grads = sdpa_grads(q, k, v, grad_out, 40**-0.5)
    assert out.shape == (2, 2, n, 40)
    assert_close_scaled(out, ref_out, 1e-5, 1e-5, f"out {grid}")
    for name, g, rg in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close_scaled(g, rg, 1e-5, 1e-5, f"{name} {grid}")


@pytest.fixture
def seen(monkeypatch):
    """(Nq, Nk) of every call into the Triton kernels."""
    calls = []
    real = autograd_fn.flash_attention

    def spy(q, k, *rest):
        calls.append((q.shape[2], k.shape[2]))
        return real(q, k, *rest)

    monkeypatch.setattr(autograd_fn, "flash_attention", spy)
    return calls


UNET = UNetConfig(sample_size=8, in_channels=3, block_out_channels=(16, 32), attention_levels=(False, True),
                  layers_per_block=1, attention_head_dim=16, norm_num_groups=8, conditioning="text",
                  cross_attention_dim=24)


@pytest.mark.parametrize("latent", [(12, 20), (8, 32), (6, 10)])  # attention at (6, 10), (4, 16), (3, 5) tokens
def test_text_unet_on_non_square_latents_matches_sdpa(latent, seen):
    torch.manual_seed(0)
    ref = Denoiser(UNET)  # SDPA
    ours = Denoiser(dataclasses.replace(UNET, attention="triton"), copy.deepcopy(ref.unet))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, *latent, generator=gen)
    t = torch.tensor([10, 700])
    text = torch.randn(2, 7, 24, generator=gen)
    outs = []
    for net in (ref, ours):
        xi, ci = x.clone().requires_grad_(), text.clone().requires_grad_()
        out = net(xi, t, ci)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append((out.detach(), xi.grad, ci.grad, {n: p.grad for n, p in net.named_parameters()}))
    (o_ref, dx_ref, dc_ref, g_ref), (o, dx, dc, g) = outs
    assert o.shape == x.shape
    torch.testing.assert_close(o, o_ref, atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(dx, dx_ref, atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(dc, dc_ref, atol=5e-5, rtol=1e-4)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], atol=5e-5, rtol=1e-4, msg=name)
    tokens = (latent[0] // 2) * (latent[1] // 2)
    # self (N, N) and cross (N, 7) attention in 4 transformer blocks (down, mid, 2 x up), all through Triton
    assert sorted(seen) == [(tokens, 7)] * 4 + [(tokens, tokens)] * 4

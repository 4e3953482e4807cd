"""Triton forward (out, lse) and backward (dQ, dK, dV) against SDPA and the eager reference.

Runs under TRITON_INTERPRET=1 on CPU (set by tests/conftest.py). The default set covers every
listed N (1, 17, 64, 100, 256), cross-attention with 77 keys, Nq > Nk and Nq < Nk, head dims 32, 40,
64, 80 (plus 8 and 160 for padding to 16 and 256), causal and not, and forced 16-wide tiles; the
full Cartesian grid is marked slow.

Tolerances (max |err| <= atol + rtol * max |reference|), reference computed in fp32 from the same
(already rounded) inputs:
  fp32: atol 1e-5, rtol 1e-5  (interpreter: exact fp32 dots; on a GPU, TF32 needs ~1e-2)
  fp16: atol 1e-3, rtol 2e-3  (P and dS are rounded to fp16 before the second matmul, as on GPUs)
  bf16: atol 1e-2, rtol 1.6e-2
  lse: atol 1e-5 (fp32) / 1e-4 (fp16, bf16): it is accumulated in fp32 in every case.
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from attention_cases import assert_close_scaled, make_inputs, reference_run, triton_run

TOLERANCES = {  # dtype: (atol, rtol, lse_atol)
    torch.float32: (1e-5, 1e-5, 1e-5),
    torch.float16: (1e-3, 2e-3, 1e-4),
    torch.bfloat16: (1e-2, 1.6e-2, 1e-4),
}


def sdpa_run(q, k, v, grad_out, causal, scale):
    q, k, v = (t.float().requires_grad_() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    grads = torch.autograd.grad(out, (q, k, v), grad_out.float())
    return out.detach(), grads


def check_case(b, h, n_q, n_k, d, causal, dtype, scale=None, block=None, against_sdpa=True):
    q, k, v, grad_out = make_inputs(b, h, n_q, n_k, d, dtype)
    scale_value = d**-0.5 if scale is None else scale
    out, lse, grads = triton_run(q, k, v, grad_out, causal, scale_value, block)
    assert out.dtype == dtype and out.shape == (b, h, n_q, d)
    assert lse.dtype == torch.float32 and lse.shape == (b, h, n_q)
    assert all(g.dtype == dtype for g in grads)
    atol, rtol, lse_atol = TOLERANCES[dtype]

    ref_out, ref_lse, ref_grads = reference_run(q, k, v, grad_out, causal, scale_value)
    assert_close_scaled(out, ref_out, atol, rtol, "out vs reference")
    assert_close_scaled(lse, ref_lse, lse_atol, 0.0, "lse vs reference")
    for name, g, rg in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close_scaled(g, rg, atol, rtol, f"{name} vs reference")

    if against_sdpa:
        sd_out, sd_grads = sdpa_run(q, k, v, grad_out, causal, scale)
        assert_close_scaled(out, sd_out, atol, rtol, "out vs SDPA")
        for name, g, sg in zip(("dq", "dk", "dv"), grads, sd_grads):
            assert_close_scaled(g, sg, atol, rtol, f"{name} vs SDPA")


# (B, H, Nq, Nk, D, causal): a covering set rather than the full product (the interpreter is slow).
FP32_CASES = [
    (1, 2, 17, 17, 40, False),
    (1, 1, 1, 1, 32, True),
    (1, 1, 1, 77, 64, False),  # one query, 77 text tokens
    (1, 2, 64, 64, 32, True),
    (1, 1, 64, 77, 40, False),  # cross-attention
    (1, 1, 100, 77, 80, True),  # Nq > Nk causal: rows >= 77 see every key
    (1, 1, 77, 100, 64, True),  # Nq < Nk causal: keys >= 77 are never seen (zero dK, dV)
    (2, 1, 100, 100, 80, False),
    (1, 1, 256, 256, 32, False),
    (1, 1, 256, 77, 40, True),
    (1, 1, 33, 20, 8, False),  # D < 16: padded to the 16-wide minimum tile
    (1, 1, 40, 24, 160, True),  # D = 160 padded to 256
]


@pytest.mark.parametrize("b,h,n_q,n_k,d,causal", FP32_CASES)
def test_fp32_matches_reference_and_sdpa(b, h, n_q, n_k, d, causal):
    check_case(b, h, n_q, n_k, d, causal, torch.float32)


@pytest.mark.parametrize(
    "dtype,case",
    [
        (torch.float16, (1, 2, 17, 77, 40, False)),
        (torch.float16, (1, 1, 100, 64, 80, True)),
        (torch.bfloat16, (1, 2, 64, 77, 32, True)),
        (torch.bfloat16, (1, 1, 100, 100, 80, False)),
    ],
)
def test_low_precision_matches_reference(dtype, case):
    check_case(*case, dtype, against_sdpa=False)


@pytest.mark.parametrize("causal", [False, True])
def test_small_tiles_many_blocks(causal):
    """16-wide tiles: 7 query tiles x 5 key tiles with ragged tails on both."""
    check_case(1, 1, 100, 77, 40, causal, torch.float32, block=16)


def test_custom_scale():
    check_case(1, 1, 50, 30, 40, True, torch.float32, scale=0.37)


def test_noncontiguous_inputs_match_contiguous():
    """diffusers hands over (B, N, H, D) memory viewed as (B, H, N, D); strides must be honoured."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, n, 2, 40, generator=gen).transpose(1, 2) for n in (33, 21, 21))
    grad_out = torch.randn(1, 2, 33, 40, generator=gen)
    out, lse, grads = triton_run(q, k, v, grad_out, False, 40**-0.5)
    c_out, c_lse, c_grads = triton_run(q.contiguous(), k.contiguous(), v.contiguous(), grad_out, False, 40**-0.5)
    assert out.stride() == q.stride()  # output keeps the input's memory layout
    torch.testing.assert_close(out, c_out, atol=0, rtol=0)
    torch.testing.assert_close(lse, c_lse, atol=0, rtol=0)
    for g, cg in zip(grads, c_grads):
        torch.testing.assert_close(g, cg, atol=0, rtol=0)


def test_causal_convention_is_top_left():
    """With Nq > Nk the first query sees only key 0: its output is exactly v[0]."""
    q, k, v, _ = make_inputs(1, 1, 40, 20, 32, torch.float32)
    out, lse, _ = triton_run(q, k, v, torch.zeros_like(q), True, 32**-0.5)
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 0], atol=1e-6, rtol=0)
    first_score = (q[0, 0, 0] @ k[0, 0, 0]) * 32**-0.5
    torch.testing.assert_close(lse[0, 0, 0], first_score, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "n_q,n_k_kind,d,causal",
    list(itertools.product([1, 17, 64, 100, 256], ["self", "cross77"], [32, 40, 64, 80], [False, True])),
)
def test_full_grid_fp32(n_q, n_k_kind, d, causal):
    n_k = n_q if n_k_kind == "self" else 77
    check_case(1, 2, n_q, n_k, d, causal, torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "n_q,n_k,d,causal",
    list(itertools.product([1, 17, 100, 256], [77], [40, 64, 80], [False, True])) + [(256, 256, 64, True)],
)
def test_full_grid_low_precision(dtype, n_q, n_k, d, causal):
    check_case(1, 2, n_q, n_k, d, causal, dtype, against_sdpa=False)

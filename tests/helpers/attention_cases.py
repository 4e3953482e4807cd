"""What the attention parity tests share: inputs, the fp32-of-the-same-inputs reference, and the
scaled error bound. The CPU tests (tests/kernels/test_kernels_parity.py, Triton interpreter) and the
GPU tests (tests/kernels/test_gpu_parity.py, compiled kernels) differ only in device and tolerances."""
from __future__ import annotations

import torch

from kernels.autograd_fn import flash_attention_with_lse
from kernels.reference import reference_attention_with_lse


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    """max |actual - expected| <= atol + rtol * max |expected|: one bound per tensor, so a gradient
    whose entries span several orders of magnitude is judged against its own scale."""
    err = (actual.double() - expected.double()).abs().max().item()
    bound = atol + rtol * expected.abs().max().item()
    assert err <= bound, f"{what}: max abs err {err:.3e} > {bound:.3e}"


def make_inputs(b, h, n_q, n_k, d, dtype, seed=0, device="cpu"):
    """q (B, H, Nq, D), k and v (B, H, Nk, D), grad_out like q; drawn in fp32 on the CPU (the same
    numbers on every device), then rounded to `dtype`."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=gen).to(dtype).to(device) for n in (n_q, n_k, n_k))
    grad_out = torch.randn(b, h, n_q, d, generator=gen).to(dtype).to(device)
    return q, k, v, grad_out


def triton_run(q, k, v, grad_out, causal, scale, block=None):
    """Triton forward and backward: out, lse (B, H, Nq) fp32, (dq, dk, dv)."""
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out, lse = flash_attention_with_lse(q, k, v, causal, scale, block, block)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    return out.detach(), lse, grads


def reference_run(q, k, v, grad_out, causal, scale, dtype=torch.float32):
    """Eager reference in `dtype` from the same (already rounded) inputs; the upcast is exact."""
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))
    out, lse = reference_attention_with_lse(q, k, v, causal, scale)
    grads = torch.autograd.grad(out, (q, k, v), grad_out.to(dtype))
    return out.detach(), lse.detach(), grads

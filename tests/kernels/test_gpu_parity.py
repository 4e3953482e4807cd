"""Triton forward (out, lse) and backward (dQ, dK, dV) against torch SDPA, compiled on a CUDA device.

The CPU suite (test_kernels_parity.py) runs the same kernels in the Triton interpreter; this file
runs what a GPU actually executes: compiled kernels, tensor-core dots and the GPU tile sizes
(kernels/tiling.py). It needs a CUDA device and compiled kernels, so it is marked `gpu` (left out
of the default run) and skips itself otherwise:

    TRITON_INTERPRET=0 python -m pytest -m gpu tests/kernels/test_gpu_parity.py

(tests/conftest.py sets TRITON_INTERPRET=1 unless the variable is already set.)

The trusted peer is `F.scaled_dot_product_attention` on the same device with the math backend in
fp64, from the same (already rounded) inputs; lse comes from the eager reference in fp64. Shapes:
odd N (1, 17, 77, 100, 333), cross-attention, Nq > Nk and Nq < Nk under the causal mask, head dims
that are not powers of two (40, 80, 160) and one below the 16-wide minimum tile (8).

GPU tolerances (max |err| <= atol + rtol * max |reference|), looser than the interpreter's:
  fp32: atol 1e-2, rtol 1e-2   tl.dot takes fp32 operands as TF32 (10-bit mantissa) on tensor cores
  fp16: atol 2e-3, rtol 5e-3   as the interpreter (P and dS rounded to fp16 before the second dot),
                                with room for another accumulation order
  bf16: atol 2e-2, rtol 3e-2
  lse:  atol 1e-2 (fp32, TF32 scores) / 1e-3 (fp16, bf16: exact products, fp32 accumulation)
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attention_cases import assert_close_scaled, make_inputs, reference_run, triton_run

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device (the GPU parity of the Triton kernels); the CPU suite covers the "
                "kernels under the interpreter", allow_module_level=True)

from kernels.tiling import interpreter_mode  # noqa: E402  (imports triton: only where CUDA exists)

if interpreter_mode():
    pytest.skip("TRITON_INTERPRET=1 runs the kernels in the interpreter, not compiled; run with "
                "TRITON_INTERPRET=0 python -m pytest -m gpu tests/kernels/test_gpu_parity.py", allow_module_level=True)

TOLERANCES = {  # dtype: (atol, rtol, lse_atol)
    torch.float32: (1e-2, 1e-2, 1e-2),
    torch.float16: (2e-3, 5e-3, 1e-3),
    torch.bfloat16: (2e-2, 3e-2, 1e-3),
}
DTYPES = list(TOLERANCES)

# (B, H, Nq, Nk, D, causal)
CASES = [
    (2, 3, 17, 17, 40, False),
    (1, 2, 1, 77, 64, False),  # one query, 77 text tokens
    (2, 2, 100, 77, 80, True),  # Nq > Nk causal: rows >= 77 see every key
    (1, 2, 77, 100, 64, True),  # Nq < Nk causal: keys >= 77 are never seen (zero dK, dV)
    (1, 4, 333, 333, 80, True),  # several GPU tiles with ragged tails
    (2, 2, 256, 77, 40, False),  # cross-attention, as in a text-conditioned UNet
    (1, 1, 33, 20, 8, False),  # D < 16: padded to the 16-wide minimum tile
    (1, 2, 100, 64, 160, True),  # D = 160 padded to 256
]


def sdpa_run(q, k, v, grad_out, causal, scale):
    """SDPA in fp64 with the math backend: the trusted peer, no fused-kernel rounding of its own."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (t.double().requires_grad_() for t in (q, k, v))
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    grads = torch.autograd.grad(out, (q, k, v), grad_out.double())
    return out.detach(), grads


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("b,h,n_q,n_k,d,causal", CASES)
def test_forward_and_backward_match_sdpa_on_cuda(b, h, n_q, n_k, d, causal, dtype):
    q, k, v, grad_out = make_inputs(b, h, n_q, n_k, d, dtype, device="cuda")
    scale = d**-0.5
    out, lse, grads = triton_run(q, k, v, grad_out, causal, scale)
    assert out.dtype == dtype and out.shape == (b, h, n_q, d) and out.is_cuda
    assert lse.dtype == torch.float32 and lse.shape == (b, h, n_q)
    assert all(g.dtype == dtype and g.shape == t.shape for g, t in zip(grads, (q, k, v)))
    atol, rtol, lse_atol = TOLERANCES[dtype]

    sd_out, sd_grads = sdpa_run(q, k, v, grad_out, causal, scale)
    assert_close_scaled(out, sd_out, atol, rtol, "out vs SDPA")
    for name, g, sg in zip(("dq", "dk", "dv"), grads, sd_grads):
        assert_close_scaled(g, sg, atol, rtol, f"{name} vs SDPA")
    _, ref_lse, _ = reference_run(q, k, v, grad_out, causal, scale, dtype=torch.float64)
    assert_close_scaled(lse, ref_lse, lse_atol, 0.0, "lse vs reference")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_dispatcher_takes_triton_on_cuda_and_matches_sdpa_in_the_same_dtype(dtype):
    """`kernels.attention` in auto mode runs Triton on CUDA (no fallback), and its error against the
    fp64 peer is of the order of SDPA's own in the same dtype."""
    from kernels import attention, select_backend

    q, k, v, _ = make_inputs(2, 4, 1024, 1024, 64, dtype, seed=1, device="cuda")
    assert select_backend(q, k, v, backend="auto") == ("triton", None)
    out = attention(q, k, v, causal=False, backend="auto")
    ref, _ = sdpa_run(q, k, v, torch.zeros_like(q), False, 64**-0.5)
    ours = (out.double() - ref).abs().max().item()
    theirs = (F.scaled_dot_product_attention(q, k, v).double() - ref).abs().max().item()
    atol, _, _ = TOLERANCES[dtype]
    assert ours <= max(4 * theirs, atol), f"triton err {ours:.2e}, SDPA {dtype} err {theirs:.2e}"

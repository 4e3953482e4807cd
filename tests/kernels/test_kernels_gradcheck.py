"""Finite-difference check of the Triton backward, an fp32 equivalent of ``torch.autograd.gradcheck``.

The kernels support fp16/bf16/fp32 only (fp64 goes to SDPA), so the full fp64 gradcheck does not
apply, and a full fp32 Jacobian would take hundreds of interpreter launches. Instead, for a few random
directions u = (u_q, u_k, u_v) and a random cotangent W, we compare the directional derivative
<grad f, u> from the kernels' backward with the central difference

    (f(x + eps u) - f(x - eps u)) / (2 eps),   f(q, k, v) = sum(W * attention(q, k, v)),

where f is evaluated by the kernels' forward in fp32 and summed in fp64. With eps = 1e-3 the
truncation error O(eps^2 |f'''|) is ~1e-6 and the fp32 rounding of the outputs, divided by 2 eps,
is ~1e-4 at most (2e-5 measured); we allow 5e-4 * (1 + |<grad f, u>|). A 1 % error in dQ alone moves
the directional derivative by ~1e-1 on these shapes, far outside that bound.
"""
from __future__ import annotations

import pytest
import torch

from kernels.autograd_fn import flash_attention_with_lse

EPS = 1e-3
RTOL = 5e-4


def _f(q, k, v, w, causal, scale):
    out, _ = flash_attention_with_lse(q, k, v, causal, scale)
    return (out.double() * w).sum()


@pytest.mark.parametrize("causal", [False, True])
def test_directional_derivatives_match_finite_differences(causal):
    gen = torch.Generator().manual_seed(3)
    n_q, n_k, d = 9, 13, 40
    q, k, v = (torch.randn(1, 2, n, d, generator=gen) for n in (n_q, n_k, n_k))
    w = torch.randn(1, 2, n_q, d, generator=gen, dtype=torch.float64)
    scale = d**-0.5

    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    grads = torch.autograd.grad(_f(*leaves, w, causal, scale), leaves)

    for trial in range(3):
        u = [torch.randn(t.shape, generator=gen) for t in (q, k, v)]
        analytic = sum((g.double() * du.double()).sum() for g, du in zip(grads, u)).item()
        plus = _f(*(t + EPS * du for t, du in zip((q, k, v), u)), w, causal, scale)
        minus = _f(*(t - EPS * du for t, du in zip((q, k, v), u)), w, causal, scale)
        numeric = ((plus - minus) / (2 * EPS)).item()
        assert abs(numeric - analytic) <= RTOL * (1 + abs(analytic)), (trial, numeric, analytic)


def test_each_input_gradient_matches_finite_differences():
    """Direction along one input at a time, so a wrong dQ cannot be hidden by dK and dV."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 1, n, 24, generator=gen) for n in (7, 5, 5))
    w = torch.randn(1, 1, 7, 24, generator=gen, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    grads = torch.autograd.grad(_f(*leaves, w, False, 0.3), leaves)
    for i, name in enumerate("qkv"):
        inputs = [q, k, v]
        du = torch.randn(inputs[i].shape, generator=gen)
        analytic = (grads[i].double() * du.double()).sum().item()
        plus = list(inputs)
        minus = list(inputs)
        plus[i] = inputs[i] + EPS * du
        minus[i] = inputs[i] - EPS * du
        numeric = ((_f(*plus, w, False, 0.3) - _f(*minus, w, False, 0.3)) / (2 * EPS)).item()
        assert abs(numeric - analytic) <= RTOL * (1 + abs(analytic)), (name, numeric, analytic)

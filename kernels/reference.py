"""Eager (plain PyTorch) attention: the trusted reference the Triton kernels are tested against.

It materialises the full (Nq, Nk) score matrix, so it is only for tests and small shapes.
Conventions shared with the kernels and with ``torch.nn.functional.scaled_dot_product_attention``:

* layout (B, H, N, D): batch, heads, tokens, head dim;
* ``scale`` defaults to 1 / sqrt(D);
* ``causal`` is *top-left aligned*: query i attends to keys j <= i, whatever Nq and Nk are.
  This is what SDPA's ``is_causal=True`` does (``torch.ones(Nq, Nk).tril()``). With Nq > Nk the
  rows i >= Nk see every key; with Nq < Nk the last keys are never seen. No row is ever empty,
  because key 0 is visible to every query.
* ``lse`` is the natural-log log-sum-exp of each row of scaled (and masked) scores, (B, H, Nq).
"""
from __future__ import annotations

import math

import torch


def default_scale(head_dim: int) -> float:
    """Softmax scale used when none is given: 1 / sqrt(D) (Vaswani et al. 2017, eq. 1)."""
    return 1.0 / math.sqrt(head_dim)


def causal_mask(n_q: int, n_k: int, device: torch.device | None = None) -> torch.Tensor:
    """(Nq, Nk) bool mask, True where query i may attend key j, i.e. j <= i (top-left aligned)."""
    rows = torch.arange(n_q, device=device)[:, None]
    cols = torch.arange(n_k, device=device)[None, :]
    return cols <= rows


def reference_attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (out, lse) computed eagerly in ``compute_dtype``.

    q: (B, H, Nq, D), k: (B, H, Nk, D), v: (B, H, Nk, Dv).
    out: (B, H, Nq, Dv) in q's dtype, lse: (B, H, Nq) in ``compute_dtype``.
    Differentiable: gradients flow through autograd, which gives the reference dQ, dK, dV.
    """
    if scale is None:
        scale = default_scale(q.shape[-1])
    qc, kc, vc = (t.to(compute_dtype) for t in (q, k, v))
    s = torch.matmul(qc, kc.transpose(-1, -2)) * scale  # (B, H, Nq, Nk)
    if causal:
        s = s.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # (B, H, Nq)
    p = torch.exp(s - lse[..., None])  # softmax, rows sum to 1
    out = torch.matmul(p, vc)
    return out.to(q.dtype), lse


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Attention output only; see :func:`reference_attention_with_lse`."""
    return reference_attention_with_lse(q, k, v, causal, scale, compute_dtype)[0]

"""The single ``autograd.Function`` tying the Triton forward and backward kernels together.

Saved for backward: q, k, v, out and the (B, H, Nq) fp32 log-sum-exp; no (Nq, Nk) tensor is kept.
Inputs are expected to be validated by :mod:`kernels.dispatch`; call :func:`kernels.attention`
rather than this module unless you need the log-sum-exp or fixed tile sizes (tests do).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .flash_bwd import flash_backward
from .flash_fwd import flash_forward


class FlashAttentionFunction(torch.autograd.Function):
    """out = softmax(scale * q k^T [causal mask]) v with Triton kernels for both passes."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float, block_m: int | None, block_n: int | None):
        with torch.cuda.device_of(q):  # Triton launches on the current device; a no-op for CPU tensors
            out, lse = flash_forward(q, k, v, causal, scale, block_m, block_n)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal = causal
        ctx.scale = scale
        ctx.blocks = (block_m, block_n)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        # lse is non-differentiable, so _grad_lse is unused (zero/None).
        with torch.cuda.device_of(q):
            dq, dk, dv = flash_backward(grad_out, q, k, v, out, lse, ctx.causal, ctx.scale, *ctx.blocks)
        return dq, dk, dv, None, None, None, None


def flash_attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    scale: float,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton attention returning (out (B, H, Nq, D), lse (B, H, Nq) fp32); out is differentiable."""
    return FlashAttentionFunction.apply(q, k, v, causal, scale, block_m, block_n)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    """Triton attention output only, with the default tile sizes."""
    return FlashAttentionFunction.apply(q, k, v, causal, scale, None, None)[0]

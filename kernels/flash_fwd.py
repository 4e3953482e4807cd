"""Flash-attention forward kernel: tiled, online softmax, fp32 accumulation.

One program computes BLOCK_M query rows of one (batch, head) and streams over the keys in tiles of
BLOCK_N, never holding the (Nq, Nk) score matrix. Scores live in the log2 domain so the kernel can
use exp2: s2 = (q . k) * scale * log2(e). The running state per row is (FlashAttention-2, alg. 1)

    m_new = max(m, rowmax(s2))                          # running max
    l_new = l * 2^(m - m_new) + rowsum(2^(s2 - m_new))  # running normaliser
    acc_new = acc * 2^(m - m_new) + 2^(s2 - m_new) @ V  # unnormalised output

and at the end out = acc / l and lse = (m + log2 l) * ln 2, the natural-log row log-sum-exp that the
backward pass uses to rebuild P without a second softmax.

Masks: query rows >= Nq and key columns >= Nk (tails of the last tile), head-dim columns >= D
(D padded up to BLOCK_D, a power of two), and, with CAUSAL, keys j > i (top-left alignment, as in
SDPA). The first key tile always holds key 0, which every query row may see, so the running max is
finite after the first step and no 2^(-inf - -inf) = NaN can appear.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .tiling import forward_tiles, interpreter_mode, padded_head_dim, with_override

LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)

INTERPRET = interpreter_mode()  # decided when triton.jit decorated the kernels below


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    H, N_Q, N_K, qk_scale_log2,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, DOT_FP32: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    # All index arithmetic is int64: B*H*N*D may exceed 2^31 elements, and the interpreter then
    # skips the int32 overflow check it otherwise runs on every index add and multiply.
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)  # (BLOCK_M,) query rows
    offs_n0 = tl.arange(0, BLOCK_N).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    m_valid = offs_m < N_Q
    d_valid = offs_d < HEAD_D

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=m_valid[:, None] & d_valid[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
    if DOT_FP32:
        q = q.to(tl.float32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Causal: row i needs keys 0..i only, so this tile of rows stops at key (pid_m + 1) * BLOCK_M.
    hi = N_K
    if CAUSAL:
        hi = tl.minimum(N_K, (pid_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        n_valid = offs_n < N_K
        # K loaded transposed, (BLOCK_D, BLOCK_N), so that q @ k_t is a plain dot.
        k_t = tl.load(
            k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
            mask=d_valid[:, None] & n_valid[None, :],
            other=0.0,
        )
        if DOT_FP32:
            k_t = k_t.to(tl.float32)
        s = tl.dot(q, k_t) * qk_scale_log2  # (BLOCK_M, BLOCK_N), log2 domain
        keep = n_valid[None, :]
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(keep, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)  # rescales what was accumulated under the old max
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]

        v = tl.load(
            v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
            mask=n_valid[:, None] & d_valid[None, :],
            other=0.0,
        )  # (BLOCK_N, BLOCK_D)
        # P is rounded to the input dtype before the second matmul (as on tensor cores).
        p_lo = p.to(V.dtype.element_ty)
        if DOT_FP32:
            p_lo = p_lo.to(tl.float32)
            v = v.to(tl.float32)
        acc = tl.dot(p_lo, v, acc)
        m_i = m_new

    out = acc / l_i[:, None]
    lse = (m_i + tl.log2(l_i)) * LN2  # natural log: log2(x) * ln 2

    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=m_valid[:, None] & d_valid[None, :])
    tl.store(LSE + pid_bh.to(tl.int64) * N_Q + offs_m, lse, mask=m_valid)


def flash_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    scale: float,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel. Inputs are validated by the dispatcher.

    q: (B, H, Nq, D), k and v: (B, H, Nk, D), any strides, one of fp16 / bf16 / fp32.
    Returns out (B, H, Nq, D) in q's dtype, with q's memory layout, and lse (B, H, Nq) fp32.
    """
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    block_d = padded_head_dim(head_dim)
    tiles = with_override(forward_tiles(block_d, INTERPRET), block_m, block_n)

    out = torch.empty_like(q)  # keeps q's stride order, e.g. (B, N, H, D) memory from diffusers
    lse = torch.empty((batch, heads, n_q), device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(n_q, tiles.block_m), batch * heads)
    _attn_fwd_kernel[grid](
        q, k, v, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        heads, n_q, n_k, scale * LOG2E,
        HEAD_D=head_dim, BLOCK_D=block_d,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
        CAUSAL=causal, DOT_FP32=INTERPRET,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )
    return out, lse

"""Flash-attention backward: delta preprocess, then a dK/dV pass and a dQ pass.

With P = softmax(scale * Q K^T) rebuilt tile by tile from the saved log-sum-exp,
P_ij = exp(scale * q_i . k_j - lse_i), the gradients are (FlashAttention-2, alg. 2)

    dV = P^T dO                      dP = dO V^T
    dS = P * (dP - delta[:, None])   delta_i = rowsum(dO_i * O_i) = rowsum(P_i * dP_i)
    dQ = scale * dS K                dK = scale * dS^T Q

Three launches, none of which writes an (Nq, Nk) matrix:

1. ``_bwd_preprocess_kernel``: delta = rowsum(O * dO), (B, H, Nq) fp32.
2. ``_bwd_dkdv_kernel``: one program per BLOCK_N keys; loops over query tiles and accumulates dK and
   dV in fp32 registers (no atomics).
3. ``_bwd_dq_kernel``: one program per BLOCK_M queries; loops over key tiles and accumulates dQ.

Masks are the forward's: query and key tails, padded head-dim columns, and top-left causal.
Masked scores are set to -inf *before* the exponential, so P is exactly 0 there and nothing overflows.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .tiling import dkdv_tiles, dq_tiles, interpreter_mode, padded_head_dim, with_override

LOG2E_HOST = 1.4426950408889634  # log2(e): scores are exponentiated with exp2
LOG2E = tl.constexpr(LOG2E_HOST)

INTERPRET = interpreter_mode()


@triton.jit
def _bwd_preprocess_kernel(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_dob, stride_doh, stride_don, stride_dod,
    H, N_Q,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    mask = (offs_m < N_Q)[:, None] & (offs_d < HEAD_D)[None, :]
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od,
                mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod,
                 mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + pid_bh.to(tl.int64) * N_Q + offs_m, tl.sum(o * do, axis=1), mask=offs_m < N_Q)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    H, N_Q, N_K, scale, qk_scale_log2,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, DOT_FP32: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)  # (BLOCK_N,) keys owned by this program
    offs_m0 = tl.arange(0, BLOCK_M).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    n_valid = offs_n < N_K
    d_valid = offs_d < HEAD_D
    nd_mask = n_valid[:, None] & d_valid[None, :]

    k = tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                mask=nd_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
    v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                mask=nd_mask, other=0.0)
    if DOT_FP32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_dob + h * stride_doh
    row_base = pid_bh.to(tl.int64) * N_Q

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    # Causal: key j is seen by queries i >= j only, so start at the query tile holding row pid_n*BLOCK_N.
    lo = 0
    if CAUSAL:
        lo = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M
    for start_m in range(lo, N_Q, BLOCK_M):
        offs_m = start_m + offs_m0
        m_valid = offs_m < N_Q
        # Q and dO loaded transposed, (BLOCK_D, BLOCK_M): the tile is computed as S^T (keys x queries).
        md_mask_t = d_valid[:, None] & m_valid[None, :]
        q_t = tl.load(q_base + offs_m[None, :] * stride_qn + offs_d[:, None] * stride_qd, mask=md_mask_t, other=0.0)
        do_t = tl.load(do_base + offs_m[None, :] * stride_don + offs_d[:, None] * stride_dod,
                       mask=md_mask_t, other=0.0)
        lse = tl.load(LSE + row_base + offs_m, mask=m_valid, other=0.0)
        delta = tl.load(DELTA + row_base + offs_m, mask=m_valid, other=0.0)
        if DOT_FP32:
            q_t = q_t.to(tl.float32)
            do_t = do_t.to(tl.float32)

        s_t = tl.dot(k, q_t) * qk_scale_log2  # (BLOCK_N, BLOCK_M), log2 domain
        keep = n_valid[:, None] & m_valid[None, :]
        if CAUSAL:
            keep = keep & (offs_n[:, None] <= offs_m[None, :])
        s_t = tl.where(keep, s_t, float("-inf"))
        p_t = tl.exp2(s_t - lse[None, :] * LOG2E)  # P^T, exactly 0 where masked

        p_lo = p_t.to(Q.dtype.element_ty)
        if DOT_FP32:
            p_lo = p_lo.to(tl.float32)
        dv = tl.dot(p_lo, tl.trans(do_t), dv)  # dV += P^T dO

        dp_t = tl.dot(v, do_t)  # (dO V^T)^T, (BLOCK_N, BLOCK_M)
        ds_t = p_t * (dp_t - delta[None, :])
        ds_lo = ds_t.to(Q.dtype.element_ty)
        if DOT_FP32:
            ds_lo = ds_lo.to(tl.float32)
        dk = tl.dot(ds_lo, tl.trans(q_t), dk)  # dK += dS^T Q (scale applied once below)

    dk = dk * scale
    tl.store(DK + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
             dk.to(DK.dtype.element_ty), mask=nd_mask)
    tl.store(DV + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd,
             dv.to(DV.dtype.element_ty), mask=nd_mask)


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    H, N_Q, N_K, scale, qk_scale_log2,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, DOT_FP32: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)  # (BLOCK_M,) queries owned by this program
    offs_n0 = tl.arange(0, BLOCK_N).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    m_valid = offs_m < N_Q
    d_valid = offs_d < HEAD_D
    md_mask = m_valid[:, None] & d_valid[None, :]

    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=md_mask, other=0.0)  # (BLOCK_M, BLOCK_D)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod,
                 mask=md_mask, other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    row_base = pid_bh.to(tl.int64) * N_Q
    lse = tl.load(LSE + row_base + offs_m, mask=m_valid, other=0.0)
    delta = tl.load(DELTA + row_base + offs_m, mask=m_valid, other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = N_K
    if CAUSAL:
        hi = tl.minimum(N_K, (pid_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        n_valid = offs_n < N_K
        dn_mask_t = d_valid[:, None] & n_valid[None, :]
        # K^T and V^T tiles, (BLOCK_D, BLOCK_N).
        k_t = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd, mask=dn_mask_t, other=0.0)
        v_t = tl.load(v_base + offs_n[None, :] * stride_vn + offs_d[:, None] * stride_vd, mask=dn_mask_t, other=0.0)
        if DOT_FP32:
            k_t = k_t.to(tl.float32)
            v_t = v_t.to(tl.float32)

        s = tl.dot(q, k_t) * qk_scale_log2  # (BLOCK_M, BLOCK_N)
        keep = m_valid[:, None] & n_valid[None, :]
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(keep, s, float("-inf"))
        p = tl.exp2(s - lse[:, None] * LOG2E)

        dp = tl.dot(do, v_t)  # dO V^T
        ds = p * (dp - delta[:, None])
        ds_lo = ds.to(Q.dtype.element_ty)
        if DOT_FP32:
            ds_lo = ds_lo.to(tl.float32)
        dq = tl.dot(ds_lo, tl.trans(k_t), dq)  # dQ += dS K

    dq = dq * scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqn + offs_d[None, :] * stride_dqd,
             dq.to(DQ.dtype.element_ty), mask=md_mask)


def flash_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    scale: float,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of attention, from the forward's out and lse (B, H, Nq) fp32.

    Any strides are accepted; each gradient is allocated with its input's layout and dtype.
    """
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    block_d = padded_head_dim(head_dim)
    lse = lse.contiguous()

    delta = torch.empty_like(lse)  # (B, H, Nq) fp32
    pre = with_override(dq_tiles(block_d, INTERPRET), block_m, None)
    _bwd_preprocess_kernel[(triton.cdiv(n_q, pre.block_m), batch * heads)](
        out, do, delta, *out.stride(), *do.stride(), heads, n_q,
        HEAD_D=head_dim, BLOCK_D=block_d, BLOCK_M=pre.block_m,
    )

    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    common = dict(HEAD_D=head_dim, BLOCK_D=block_d, CAUSAL=causal, DOT_FP32=INTERPRET)

    kv_tiles = with_override(dkdv_tiles(block_d, INTERPRET), block_m, block_n)
    _bwd_dkdv_kernel[(triton.cdiv(n_k, kv_tiles.block_n), batch * heads)](
        q, k, v, do, lse, delta, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
        heads, n_q, n_k, scale, scale * LOG2E_HOST,
        BLOCK_M=kv_tiles.block_m, BLOCK_N=kv_tiles.block_n,
        num_warps=kv_tiles.num_warps, num_stages=kv_tiles.num_stages, **common,
    )

    q_tiles = with_override(dq_tiles(block_d, INTERPRET), block_m, block_n)
    _bwd_dq_kernel[(triton.cdiv(n_q, q_tiles.block_m), batch * heads)](
        q, k, v, do, lse, delta, dq,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
        heads, n_q, n_k, scale, scale * LOG2E_HOST,
        BLOCK_M=q_tiles.block_m, BLOCK_N=q_tiles.block_n,
        num_warps=q_tiles.num_warps, num_stages=q_tiles.num_stages, **common,
    )
    return dq, dk, dv

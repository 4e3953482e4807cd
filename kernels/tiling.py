"""Tile sizes and launch constants shared by the forward and backward kernels.

Two regimes:

* **Interpreter** (``TRITON_INTERPRET=1``, CPU tensors): every program runs as numpy code, so small
  fixed tiles (32) keep the multi-block and masked-tail paths exercised on small test shapes. No
  autotuning. ``tl.dot`` operands are cast to fp32 (``DOT_FP32``) because the interpreter multiplies
  the raw bits of bf16 operands (upstream triton#11584); fp16 -> fp32 is exact and the kernels still
  round P and dS to the input dtype first, so the numerics match a GPU's fp32-accumulating MMA.
* **GPU**: fixed tiles chosen by padded head dim (no autotuning: one compile per head dim and
  dtype, deterministic). fp32 inputs go through TF32 tensor cores there.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import triton

MIN_BLOCK_D = 16  # tl.dot needs every dimension >= 16
INTERPRETER_BLOCK = 32


def interpreter_mode() -> bool:
    """True when Triton runs kernels in its numpy interpreter (decided by TRITON_INTERPRET)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def padded_head_dim(head_dim: int) -> int:
    """BLOCK_D: next power of two >= D (and >= 16). Columns D..BLOCK_D-1 are masked to zero."""
    return max(MIN_BLOCK_D, triton.next_power_of_2(head_dim))


@dataclass(frozen=True)
class Tiles:
    """Tile sizes for one kernel launch: BLOCK_M query rows by BLOCK_N key rows."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2


def forward_tiles(block_d: int, interpret: bool) -> Tiles:
    """Tiles of the forward kernel (one program per BLOCK_M query rows)."""
    if interpret:
        return Tiles(INTERPRETER_BLOCK, INTERPRETER_BLOCK, 1, 1)
    if block_d <= 64:
        return Tiles(128, 64, 4, 3)
    if block_d <= 128:
        return Tiles(128, 32, 8, 2)
    return Tiles(64, 32, 4, 1)


def dkdv_tiles(block_d: int, interpret: bool) -> Tiles:
    """Tiles of the dK/dV kernel (one program per BLOCK_N keys, looping over query blocks)."""
    if interpret:
        return Tiles(INTERPRETER_BLOCK, INTERPRETER_BLOCK, 1, 1)
    if block_d <= 64:
        return Tiles(32, 128, 4, 3)
    if block_d <= 128:
        return Tiles(32, 64, 4, 2)
    return Tiles(16, 32, 4, 1)


def dq_tiles(block_d: int, interpret: bool) -> Tiles:
    """Tiles of the dQ kernel (one program per BLOCK_M queries, looping over key blocks)."""
    if interpret:
        return Tiles(INTERPRETER_BLOCK, INTERPRETER_BLOCK, 1, 1)
    if block_d <= 64:
        return Tiles(128, 32, 4, 3)
    if block_d <= 128:
        return Tiles(64, 32, 4, 2)
    return Tiles(32, 16, 4, 1)


def with_override(tiles: Tiles, block_m: int | None, block_n: int | None) -> Tiles:
    """Replace tile sizes (tests use this to force many small blocks). Must be powers of 2 >= 16."""
    for name, value in (("block_m", block_m), ("block_n", block_n)):
        if value is not None and (value < MIN_BLOCK_D or value & (value - 1)):
            raise ValueError(f"{name} must be a power of two >= {MIN_BLOCK_D}, got {value}")
    return Tiles(
        block_m if block_m is not None else tiles.block_m,
        block_n if block_n is not None else tiles.block_n,
        tiles.num_warps,
        tiles.num_stages,
    )

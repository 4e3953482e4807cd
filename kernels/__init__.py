"""Triton flash attention for ldm-system, with an SDPA fallback and a diffusers processor.

Public API::

    from kernels import attention, set_backend, get_backend, use_triton_attention

    out = attention(q, k, v, causal=False, scale=None)  # (B, H, N, D) layout
    set_backend("triton" | "sdpa" | "auto")             # or env LDM_ATTENTION_BACKEND
    use_triton_attention(unet, backend="auto")          # route a diffusers UNet's attention

Importing this package imports torch only; triton is loaded on the first Triton call and diffusers
on the first ``use_triton_attention`` call. This package imports nothing from ldm_system or
autoencoders.
"""
from __future__ import annotations

from .diffusers_processor import TritonAttnProcessor, use_triton_attention
from .dispatch import BACKENDS, ENV_VAR, attention, get_backend, reset_fallback_warnings, select_backend, set_backend
from .reference import reference_attention, reference_attention_with_lse

__all__ = [
    "BACKENDS",
    "TritonAttnProcessor",
    "ENV_VAR",
    "attention",
    "get_backend",
    "reference_attention",
    "reference_attention_with_lse",
    "reset_fallback_warnings",
    "select_backend",
    "set_backend",
    "use_triton_attention",
]

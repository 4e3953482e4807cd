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

from .dispatch import BACKENDS, ENV_VAR, attention, get_backend, reset_fallback_warnings, select_backend, set_backend
from .reference import reference_attention, reference_attention_with_lse


def use_triton_attention(model, backend: str | None = None) -> int:
    """Install :class:`kernels.diffusers_processor.TritonAttnProcessor` on a diffusers model.

    Returns the number of attention layers routed through :func:`attention`.
    """
    from .diffusers_processor import use_triton_attention as _install

    return _install(model, backend)


__all__ = [
    "BACKENDS",
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

"""Backend selection for :func:`attention`: the Triton kernels or ``F.scaled_dot_product_attention``.

Modes (``set_backend``, the ``backend=`` argument, or env var ``LDM_ATTENTION_BACKEND``):

* ``"auto"`` (default): Triton on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1``
  (the test path); SDPA otherwise, silently.
* ``"triton"``: Triton wherever it can run. On a device where it cannot (CPU without the
  interpreter, MPS, ...), SDPA with a one-time warning.
* ``"sdpa"``: always SDPA.

Whatever the mode, an input the kernels do not support (an attention mask, fp64, head dim > 256,
a value head dim different from the query's, Nq or Nk == 0, different B or H for q and k) goes to
SDPA with a one-time warning per reason, never to a kernel that would give wrong numbers.

This module imports only torch; triton is imported on first use of the Triton path.
"""
from __future__ import annotations

import math
import os
import sys
import warnings

import torch
import torch.nn.functional as F

from .reference import default_scale

BACKENDS = ("auto", "triton", "sdpa")
ENV_VAR = "LDM_ATTENTION_BACKEND"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256  # larger head dims go to SDPA: a (BLOCK_M, 512) fp32 tile would not fit in registers

_forced_backend: str | None = None
_warned: set[str] = set()


def normalize_backend(name: str, source: str) -> str:
    """Lower-cased backend name; ValueError naming ``source`` if it is not one of BACKENDS."""
    value = name.strip().lower()
    if value not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r} from {source}; expected one of {BACKENDS}")
    return value


def set_backend(name: str | None) -> str | None:
    """Force the process-wide backend ("auto", "triton" or "sdpa"); None restores env/default.

    Returns the previous forced value (None if none was forced), so callers can restore it.
    """
    global _forced_backend
    previous = _forced_backend
    _forced_backend = None if name is None else normalize_backend(name, "set_backend()")
    return previous


def get_backend() -> str:
    """The configured mode: set_backend() if called, else $LDM_ATTENTION_BACKEND, else "auto"."""
    if _forced_backend is not None:
        return _forced_backend
    env = os.environ.get(ENV_VAR)
    if env:
        return normalize_backend(env, f"${ENV_VAR}")
    return "auto"


def _interpreter_enabled() -> bool:
    """Interpreter mode as the kernels were built, or as they will be built on first import."""
    kernel_module = sys.modules.get(f"{__package__}.flash_fwd")
    if kernel_module is not None:  # triton.jit chose interpreted or compiled kernels at import time
        return bool(kernel_module.INTERPRET)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _device_reason(q: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot run on q's device (None if they can)."""
    if q.device.type == "cuda":
        return None if _triton_importable() else "triton is not installed"
    if q.device.type == "cpu" and _interpreter_enabled():
        return None if _triton_importable() else "triton is not installed"
    return f"device {q.device.type!r} without TRITON_INTERPRET=1"


def _input_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None) -> str | None:
    """Why the kernels do not support these inputs (None if they do)."""
    if attn_mask is not None:
        return "an attention mask"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype}"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head dim > {MAX_HEAD_DIM}"
    if v.shape[-1] != q.shape[-1]:
        return "a value head dim different from the query head dim"
    if q.shape[:2] != k.shape[:2]:
        return "different batch or head counts for q and k/v"
    if q.shape[2] == 0 or k.shape[2] == 0:
        return "an empty sequence"
    return None


def select_backend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[str, str | None]:
    """Return (backend actually used, reason for a warned fallback or None)."""
    mode = get_backend() if backend is None else normalize_backend(backend, "backend=")
    if mode == "sdpa":
        return "sdpa", None
    device_reason = _device_reason(q)
    if device_reason is not None:
        # In auto mode SDPA is simply the right choice off-GPU; only a forced "triton" warns.
        return "sdpa", (device_reason if mode == "triton" else None)
    input_reason = _input_reason(q, k, v, attn_mask)
    if input_reason is not None:
        return "sdpa", input_reason
    return "triton", None


def _warn_once(reason: str) -> None:
    if reason in _warned:
        return
    _warned.add(reason)
    warnings.warn(
        f"Triton attention does not support {reason}; falling back to "
        "torch.nn.functional.scaled_dot_product_attention (warned once).",
        RuntimeWarning,
        stacklevel=3,
    )


def reset_fallback_warnings() -> None:
    """Forget which fallback warnings were shown (for tests)."""
    _warned.clear()


def _validate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale, attn_mask) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must have layout (B, H, N, D), got shape {tuple(t.shape)}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention: q and k head dims differ: {q.shape[-1]} vs {k.shape[-1]}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"attention: k and v token counts differ: {k.shape[2]} vs {v.shape[2]}")
    if scale is not None and not math.isfinite(float(scale)):
        raise ValueError(f"attention: scale must be a finite number, got {scale}")
    if causal and attn_mask is not None:
        raise ValueError("attention: pass either causal=True or attn_mask, not both")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    *,
    attn_mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """softmax(scale * q k^T) v over layout (B, H, N, D); differentiable in q, k, v.

    q: (B, H, Nq, D); k: (B, H, Nk, D); v: (B, H, Nk, D) -> (B, H, Nq, D) in q's dtype.
    ``causal`` is top-left aligned like SDPA's ``is_causal`` (query i sees keys j <= i).
    ``scale`` defaults to 1 / sqrt(D). ``attn_mask`` (SDPA semantics) forces the SDPA path.
    ``backend`` overrides :func:`get_backend` for this call.
    """
    _validate(q, k, v, causal, scale, attn_mask)
    chosen, reason = select_backend(q, k, v, attn_mask, backend)
    if chosen == "triton":
        from .autograd_fn import flash_attention  # lazy: keeps `import kernels` free of triton

        return flash_attention(q, k, v, bool(causal), float(default_scale(q.shape[-1]) if scale is None else scale))
    if reason is not None:
        _warn_once(reason)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal, scale=scale)

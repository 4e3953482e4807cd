"""A diffusers attention processor that routes ``Attention`` through :func:`kernels.attention`.

``TritonAttnProcessor`` does what diffusers' ``AttnProcessor2_0`` does around the attention call
(spatial norm, (B, C, H, W) <-> (B, HW, C) reshapes, group norm, cross-attention norm, q/k norms,
output projection and dropout, residual connection, output rescale) and calls our dispatcher in
place of ``F.scaled_dot_product_attention``. One difference: it honours ``attn.scale``. That equals
AttnProcessor2_0's implicit 1/sqrt(head_dim) whenever ``scale_qk=True`` (the diffusers default), and
matches diffusers' plain ``AttnProcessor``, which is the default when ``scale_qk=False``.

Install it on a whole model with :func:`use_triton_attention`. diffusers is imported lazily, so
``import kernels`` stays light.
"""
from __future__ import annotations

import warnings

import torch

from .dispatch import attention, normalize_backend

# Processors whose math this one reproduces; anything else (added-KV, IP-adapter, LoRA, ...) is kept.
_REPLACEABLE = ("AttnProcessor", "AttnProcessor2_0", "TritonAttnProcessor")


class TritonAttnProcessor:
    """Drop-in for ``AttnProcessor2_0`` backed by :func:`kernels.attention`.

    ``backend`` ("auto", "triton", "sdpa" or None for the process-wide setting) is passed to every
    call, so one model can be pinned to a backend without touching global state.
    """

    def __init__(self, backend: str | None = None):
        self.backend = None if backend is None else normalize_backend(backend, "TritonAttnProcessor(backend=)")

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:  # (B, C, H, W) -> (B, H*W, C)
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)

        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, n_kv = context.shape[:2]

        if attention_mask is not None:
            # diffusers returns (B * heads, Nq or 1, Nk); SDPA semantics want (B, heads, Nq or 1, Nk).
            attention_mask = attn.prepare_attention_mask(attention_mask, n_kv, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:  # GroupNorm over channels of (B, N, C)
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        # (B, N, heads * D) -> (B, heads, N, D): a strided view, the kernels take any strides.
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = attention(
            query, key, value, causal=False, scale=attn.scale, attn_mask=attention_mask, backend=self.backend
        )  # (B, heads, Nq, D)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout

        if input_ndim == 4:  # (B, H*W, C) -> (B, C, H, W)
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _is_replaceable(module) -> bool:
    processor = getattr(module, "processor", None)
    return type(processor).__name__ in _REPLACEABLE and getattr(module, "added_kv_proj_dim", None) is None


def use_triton_attention(model: torch.nn.Module, backend: str | None = None) -> int:
    """Route every standard diffusers ``Attention`` layer of ``model`` through :func:`kernels.attention`.

    Uses ``model.set_attn_processor`` when the model has it (UNet2DConditionModel, ...) and sets each
    layer's processor directly otherwise (UNet2DModel has no such method). Layers with processors this
    one does not reproduce (added-KV, IP-adapter, custom) are left alone, with a warning.
    Returns the number of layers routed. ``backend`` is "auto", "triton", "sdpa" or None (global).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"use_triton_attention expects a torch.nn.Module, got {type(model).__name__}")
    from diffusers.models.attention_processor import Attention

    processor = TritonAttnProcessor(backend)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, Attention)}
    routed = [name for name, m in layers.items() if _is_replaceable(m)]
    skipped = sorted(set(layers) - set(routed))
    if skipped:
        warnings.warn(f"use_triton_attention: left {len(skipped)} attention layers unchanged: {skipped}", UserWarning)

    if hasattr(model, "set_attn_processor") and hasattr(model, "attn_processors"):
        current = model.attn_processors  # {"<module path>.processor": processor}
        model.set_attn_processor(
            {key: processor if key[: -len(".processor")] in routed else proc for key, proc in current.items()}
        )
    else:
        for name in routed:
            layers[name].set_processor(processor)
    return len(routed)

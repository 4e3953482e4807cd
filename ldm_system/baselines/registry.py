"""The baseline families by name: a plain dict per use, filled on first use.

The families' modules import only when asked for, so `ldm report` on an LDM alone never builds
them, and a missing optional piece of one family does not break the others.
"""
from __future__ import annotations

from typing import Any, Callable

FAMILIES = ("gan", "flow", "ar")


def trainers() -> dict[str, tuple[type, Callable[..., Any]]]:
    """family -> (run config class, run function(cfg, resume=None) -> model folder)."""
    from ldm_system.baselines.autoregressive import ARRunConfig, run_ar
    from ldm_system.baselines.flow import FlowRunConfig, run_flow
    from ldm_system.baselines.gan import GANRunConfig, run_gan

    return {"gan": (GANRunConfig, run_gan), "flow": (FlowRunConfig, run_flow), "ar": (ARRunConfig, run_ar)}


def loader(family: str) -> Callable[..., Any]:
    """family -> load function(model folder) -> Generator."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    if family == "gan":
        from ldm_system.baselines.gan import load_gan as load
    elif family == "flow":
        from ldm_system.baselines.flow import load_flow as load
    else:
        from ldm_system.baselines.autoregressive import load_ar as load
    return load

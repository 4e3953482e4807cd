"""The baseline families by name: one `Family` entry each, the only list of them.

`ldm train-baseline`'s choices and `ldm report`'s loaders are read from here, so a new family is one
entry below (and its module). Each entry is a small function that imports its family's module only
when asked for: `ldm --help` and `ldm report` on an LDM alone never build them, and a missing
optional piece of one family does not break the others.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Family:
    config: type  # the run config (`data`, `model`, ..., `train`) that YAML and `--set` fill
    run: Callable[..., Path]  # run(cfg, resume=None) → the model folder it wrote
    load: Callable[..., Any]  # load(model folder or run folder, device="cpu") → an eval GenerativeModel


def _gan() -> Family:
    from ldm_system.baselines.gan import GANRunConfig, load_gan, run_gan

    return Family(GANRunConfig, run_gan, load_gan)


def _flow() -> Family:
    from ldm_system.baselines.flow import FlowRunConfig, load_flow, run_flow

    return Family(FlowRunConfig, run_flow, load_flow)


def _ar() -> Family:
    from ldm_system.baselines.autoregressive import ARRunConfig, load_ar, run_ar

    return Family(ARRunConfig, run_ar, load_ar)


def _vq_ar() -> Family:
    from ldm_system.baselines.vq_ar import VQARRunConfig, load_vq_ar, run_vq_ar

    return Family(VQARRunConfig, run_vq_ar, load_vq_ar)


REGISTRY: dict[str, Callable[[], Family]] = {"gan": _gan, "flow": _flow, "ar": _ar, "vq-ar": _vq_ar}
FAMILIES = tuple(REGISTRY)


def lookup(name: str) -> Family:
    if name not in REGISTRY:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")
    return REGISTRY[name]()


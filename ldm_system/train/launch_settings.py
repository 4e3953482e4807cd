"""One source of truth per setting: what `accelerate launch` was told, unless the YAML says otherwise.

`accelerate launch --mixed_precision bf16` (or `mixed_precision: bf16` in the accelerate config
file) reaches the workers as ACCELERATE_MIXED_PRECISION; `--gradient_accumulation_steps N` as
ACCELERATE_GRADIENT_ACCUMULATION_STEPS. The rule, per setting:

    YAML unset (null)                      → the launcher's value (accelerate's default when unset)
    YAML set, launcher unset or the same   → the YAML value
    YAML set, launcher set to another one  → an error naming both

accelerate always exports ACCELERATE_MIXED_PRECISION, "no" when nobody asked for anything, so a
launcher "no" counts as unset: a YAML `bf16` under a plain launch is not a conflict. The resolved
values are what the run uses, what it logs at start and what its `config.yaml` records.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping, TypeVar

from ldm_system.config import ConfigError

PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"
ACCUM_ENV = "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"

C = TypeVar("C")


def launcher_precision(env: Mapping[str, str]) -> str | None:
    value = env.get(PRECISION_ENV, "").strip().lower()
    return None if value in ("", "no") else value


def launcher_grad_accum(env: Mapping[str, str]) -> int | None:
    value = env.get(ACCUM_ENV, "").strip()
    if not value or value == "auto":
        return None
    return int(value)


def _pick(key: str, yaml_value, launcher_value, default):
    if yaml_value is None:
        return launcher_value if launcher_value is not None else default
    if launcher_value is not None and launcher_value != yaml_value:
        raise ConfigError(
            f"train.{key} is {yaml_value!r} in the config but the launcher says {launcher_value!r} "
            f"(accelerate launch flag or config file); remove one of them or make them agree"
        )
    return yaml_value


def resolve(cfg: C, env: Mapping[str, str] | None = None) -> C:
    """`cfg` (an EngineConfig) with `mixed_precision` and `grad_accum` filled from the launcher."""
    env = os.environ if env is None else env
    precision = _pick("mixed_precision", cfg.mixed_precision, launcher_precision(env), "no")
    accum = _pick("grad_accum", cfg.grad_accum, launcher_grad_accum(env), 1)
    return dataclasses.replace(cfg, mixed_precision=precision, grad_accum=accum)

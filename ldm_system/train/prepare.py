"""Parallelism and performance wrappers, kept out of the models and out of the loop.

`make_accelerator` builds the `Accelerator` (gloo on machines without CUDA, where NCCL is absent
and every rank would otherwise think it is rank 0). `prepare` applies activation checkpointing and
`torch.compile`, then hands modules, optimizers and schedulers to `accelerator.prepare`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs
from torch import nn


def make_accelerator(grad_accum: int, mixed_precision: str, micro_batch: int) -> Accelerator:
    kwargs = []
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        kwargs.append(InitProcessGroupKwargs(backend="gloo"))
    accelerator = Accelerator(
        gradient_accumulation_steps=grad_accum,
        mixed_precision=mixed_precision,
        kwargs_handlers=kwargs,
    )
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        # No dataloader goes through `prepare` (the stream splits by rank itself), so DeepSpeed
        # cannot infer these "auto" values.
        ds = plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = micro_batch
        ds["gradient_accumulation_steps"] = grad_accum
        ds["train_batch_size"] = micro_batch * grad_accum * accelerator.num_processes
    return accelerator


def uses_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def zero_stage(accelerator: Accelerator) -> int:
    plugin = accelerator.state.deepspeed_plugin
    return int(plugin.zero_stage) if plugin is not None else 0


def warmup_cosine(warmup: int, total: int, min_ratio: float, schedule: str):
    """LR multiplier: linear warmup to 1, then cosine decay to `min_ratio` (or constant)."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@dataclass
class Prepared:
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LambdaLR]


def prepare(
    accelerator: Accelerator,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, torch.optim.lr_scheduler.LambdaLR],
    gradient_checkpointing: bool = False,
    compile: bool = False,
) -> Prepared:
    if uses_deepspeed(accelerator) and len(modules) != 1:
        raise ValueError(
            f"DeepSpeed trains exactly one model per run; this task has {sorted(modules)}. "
            "Launch it with DDP (accelerate launch --multi_gpu) instead."
        )
    for m in modules.values():
        if gradient_checkpointing:
            if not hasattr(m, "enable_gradient_checkpointing"):
                raise ValueError(f"{type(m).__name__} does not support gradient checkpointing")
            m.enable_gradient_checkpointing()
    names = list(modules)
    if compile:
        for n in names:
            modules[n] = torch.compile(modules[n])
    opt_names, sched_names = list(optimizers), list(schedulers)
    objs = accelerator.prepare(
        *[modules[n] for n in names], *[optimizers[n] for n in opt_names], *[schedulers[n] for n in sched_names]
    )
    if not isinstance(objs, tuple):
        objs = (objs,)
    k = len(names)
    j = k + len(opt_names)
    return Prepared(
        modules=dict(zip(names, objs[:k])),
        optimizers=dict(zip(opt_names, objs[k:j])),
        schedulers=dict(zip(sched_names, objs[j:])),
    )

"""Parallelism and performance wrappers, kept out of the models and out of the loop.

`make_accelerator` builds the `Accelerator` (gloo on machines without CUDA, where NCCL is absent
and every rank would otherwise think it is rank 0). `prepare` applies activation checkpointing and
`torch.compile`, then hands modules, optimizers and schedulers to `accelerator.prepare`.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs
from torch import nn

log = logging.getLogger(__name__)


def make_accelerator(grad_accum: int, mixed_precision: str, micro_batch: int | None,
                     timeout_s: float = 1800.0) -> Accelerator:
    # The timeout bounds every collective: when a machine dies, the others raise instead of hanging.
    kwargs = [InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))]
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        kwargs = [InitProcessGroupKwargs(backend="gloo", timeout=timedelta(seconds=timeout_s))]
    accelerator = Accelerator(
        gradient_accumulation_steps=grad_accum,
        mixed_precision=mixed_precision,
        kwargs_handlers=kwargs,
        # Our schedules count optimizer steps. Tied to the optimizer, accelerate would step them once
        # per *process* each step (it assumes a per-process epoch length), so warmup and cosine
        # decay would run N times too fast on N processes. The engine steps them on sync steps.
        step_scheduler_with_optimizer=False,
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and accelerator.distributed_type == DistributedType.NO:  # e.g. a MULTI_GPU file, no CUDA
        raise RuntimeError(f"launched {world} processes but accelerate runs them as unsynchronised copies (no CUDA "
                           "for this launch config): on CPU machines set ACCELERATE_USE_CPU=1 or use_cpu: true")
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        if micro_batch is None:
            raise ValueError("DeepSpeed needs the micro-batch size: pass micro_batch (the loader's data.batch_size)")
        # No dataloader goes through `prepare` (the stream splits by rank itself), so DeepSpeed
        # cannot infer these "auto" values.
        ds = plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = micro_batch
        ds["gradient_accumulation_steps"] = grad_accum
        ds["train_batch_size"] = micro_batch * grad_accum * accelerator.num_processes
        _no_persistent_zero3_params(ds)
    return accelerator


def _no_persistent_zero3_params(ds: dict) -> None:
    """ZeRO-3 keeps parameters smaller than `stage3_param_persistence_threshold` (default 1e5
    elements) gathered on every rank. In DeepSpeed 0.19.8 those full copies are not refreshed from
    the optimizer's updated shards after each step (`_post_step` all-gathers only parameters that
    are not already available), so forward passes run on stale small parameters (biases, norms,
    embeddings), and a resumed run, which reloads them from the shards, leaves the uninterrupted
    trajectory (measured: loss 0.9070 vs 0.8975 one step after a resume, 2 machines x 1 process).
    With 0, every parameter is gathered from its current shard: resume is bit-exact and both runs
    follow the true trajectory. The cost is a few more small all-gathers per forward."""
    zero = ds.get("zero_optimization", {})
    if int(zero.get("stage", 0)) != 3:
        return
    threshold = zero.get("stage3_param_persistence_threshold", "auto")
    if threshold != 0:
        log.warning("ZeRO-3: stage3_param_persistence_threshold=%s replaced by 0 (persistent parameters go stale "
                    "in DeepSpeed and break exact resume; see ldm_system/train/prepare.py)", threshold)
        zero["stage3_param_persistence_threshold"] = 0
        ds["zero_optimization"] = zero


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

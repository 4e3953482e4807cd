"""Deciding how to resume, before the modules are wrapped.

Three outcomes for `--resume latest|PATH`:

- **full**: the same world size and ZeRO stage: accelerate/DeepSpeed restore model, optimizer,
  schedulers and every rank's RNG; the trainer restores step, EMA and data position. Resumed =
  uninterrupted, bit for bit on CPU.
- **weights only**: asked for with `--resume-weights-only`, or forced by a different world size
  (ZeRO shards, per-rank RNG and data positions do not map onto another number of ranks). The
  consolidated safetensors in `weights/` are loaded into the unwrapped modules before
  `accelerator.prepare`, so ZeRO's fp32 master copy starts from them; optimizer state is new; the
  step counter, LR schedule position and EMA continue; the data stream starts a new pass.
- **an error**: another task, another ZeRO stage, other tensor shapes, or a damaged file.

Only safetensors and JSON are read here; pickled state (optimizer, RNG) is left to accelerate
after `checkpoint.verify` has checked it against the manifest.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from ldm_system.train import checkpoint as ckpt


@dataclass(frozen=True)
class ResumePlan:
    path: Path
    meta: dict
    weights_only: bool
    why: str = ""  # for the log when weights_only

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def plan(resume: str, run_dir: Path, *, task: str, world_size: int, zero_stage: int, weights_only: bool,
         log: Callable[[str], None]) -> ResumePlan | None:
    path = ckpt.resolve(resume, run_dir, log, only=ckpt.weights_files if weights_only else None)
    if path is None:
        log(f"no checkpoint in {run_dir / 'checkpoints'}, starting from step 0")
        return None
    meta = ckpt.read_json(path / "trainer.json")
    if meta.get("task") != task:
        raise ckpt.CheckpointError(f"{path} was written by task {meta.get('task')!r}, not {task!r}")
    if weights_only:
        return ResumePlan(path, meta, True, "--resume-weights-only")
    saved_stage = int(meta.get("zero_stage", 0))
    if saved_stage != zero_stage:
        raise ckpt.CheckpointError(
            f"{path} was written under ZeRO stage {saved_stage}, this run uses stage {zero_stage}; relaunch with "
            "the same stage, or pass --resume-weights-only to continue from its weights with new optimizer state")
    if int(meta["world_size"]) != world_size:
        return ResumePlan(path, meta, True, f"the world size changed from {meta['world_size']} to {world_size} "
                                            "processes")
    return ResumePlan(path, meta, False)


def check_shapes(path: Path, modules: dict[str, nn.Module]) -> None:
    """The checkpoint's consolidated tensors must be the modules' tensors, name for name and shape
    for shape; otherwise it belongs to another model and loading it would fail deep inside
    accelerate or DeepSpeed (or, worse, partly succeed)."""
    for name, module in modules.items():
        f = path / "weights" / f"{name}.safetensors"
        if not f.is_file():
            raise ckpt.CheckpointError(f"{path}: no consolidated weights for module {name!r} ({f.name})")
        with safe_open(str(f), "pt") as sf:
            saved = {k: tuple(sf.get_slice(k).get_shape()) for k in sf.keys()}
        live = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        problems = [f"{k}: missing" for k in sorted(set(live) - set(saved))]
        problems += [f"{k}: unexpected" for k in sorted(set(saved) - set(live))]
        problems += [f"{k}: {saved[k]} vs {live[k]}" for k in sorted(set(saved) & set(live)) if saved[k] != live[k]]
        if problems:
            shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
            raise ckpt.CheckpointError(f"{path} holds another model: module {name!r} differs ({shown})")


def load_weights(path: Path, modules: dict[str, nn.Module]) -> None:
    """Consolidated weights into the unwrapped modules (call before accelerator.prepare)."""
    for name, module in modules.items():
        module.load_state_dict(load_file(str(path / "weights" / f"{name}.safetensors")))


def ema_weights(path: Path, module_name: str) -> dict[str, torch.Tensor] | None:
    f = path / "weights" / f"{module_name}.ema.safetensors"
    return load_file(str(f)) if f.is_file() else None


def advance_schedulers(schedulers: dict, step: int) -> None:
    """Put LambdaLR schedulers at `step` (their lambdas only depend on the step count)."""
    for wrapped in schedulers.values():
        sched = getattr(wrapped, "scheduler", wrapped)  # accelerate's AcceleratedScheduler wraps it
        sched.last_epoch = step
        values = [base * lam(step) for base, lam in zip(sched.base_lrs, sched.lr_lambdas)]
        for group, lr in zip(sched.optimizer.param_groups, values):
            group["lr"] = lr
        sched._last_lr = values

"""The engine's configuration (`train:` in a run's YAML), one section per concern.

    train:
      out_dir: runs/mine          # the run folder
      steps: 2500                 # optimizer steps
      max_minutes: 4.0            # time budget: stop early, checkpoint, exit cleanly (0 = none)
      budget_clock: wall          # "wall", or "cpu": the process's CPU time / its threads
      seed: 0
      grad_accum: null            # null = what `accelerate launch` says (launch_settings.py)
      mixed_precision: null       # "no" | "bf16" | "fp16"; null = the launcher's
      max_grad_norm: 1.0          # 0 disables clipping
      gradient_checkpointing: false
      compile: false
      lr:         {schedule: cosine, warmup_steps: 100, min_ratio: 0.1}
      ema:        {module: unet, decay: 0.995, warmup: true}
      checkpoint: {every: 500, keep_last: 3}
      log:        {every: 50, preview_every: 500, progress: true}
      faults:     {max_nan_steps: 5, preempt_signals: [SIGTERM, SIGUSR1], dist_timeout_s: 1800}

The micro-batch is the data loader's `data.batch_size` (one key); the engine gets it from the run.
Keys of the earlier flat layout (`train.ema_decay`, `train.ckpt_every`, ...) are refused with their
new place (`MOVED`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional


@dataclass(frozen=True)
class LRConfig:
    """The learning-rate factor over steps (the base rate is the task's `optim:`)."""

    schedule: Literal["cosine", "constant"] = "constant"
    warmup_steps: int = 0  # linear warmup from 0
    min_ratio: float = 0.1  # cosine ends at min_ratio × the base rate


@dataclass(frozen=True)
class EMAConfig:
    module: str = ""  # name of the task module to average ("" = no EMA)
    decay: float = 0.9999
    warmup: bool = True  # decay ramps up as (1 + n) / (10 + n) early on


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 0  # steps between checkpoints; 0 = only at the end
    keep_last: int = 3  # 0 = keep all


@dataclass(frozen=True)
class LogConfig:
    every: int = 10  # steps between logged scalars
    preview_every: int = 0  # steps between preview grids; 0 = only at the end
    progress: bool = True  # a progress bar on the main process


@dataclass(frozen=True)
class FaultConfig:
    max_nan_steps: int = 5  # consecutive non-finite steps before stopping
    # Signals that mean "checkpoint at the next step and exit 75" (SLURM: SIGTERM, or --signal=USR1@90).
    preempt_signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")
    # A collective that waits longer than this raises on every live rank instead of hanging forever
    # (e.g. when another machine died). Checkpoint gathers of large models must fit in it.
    dist_timeout_s: float = 1800.0


@dataclass(frozen=True)
class EngineConfig:
    out_dir: str = "runs/debug"
    steps: int = 100
    max_minutes: float = 0.0  # time budget (0 = none): stop early, checkpoint, exit cleanly
    # How max_minutes is counted. "wall": the clock on the wall. "cpu": this process's CPU time divided
    # by its torch threads, i.e. minutes of the cores it was given: other work on the machine does not
    # eat into the budget (comparisons at equal compute, launch/compare.sh).
    budget_clock: Literal["wall", "cpu"] = "wall"
    seed: int = 0
    # null = what `accelerate launch` says (--mixed_precision / --gradient_accumulation_steps or its
    # config file); a value here that contradicts the launcher is an error (launch_settings.py).
    grad_accum: Optional[int] = None
    mixed_precision: Optional[Literal["no", "bf16", "fp16"]] = None
    max_grad_norm: float = 1.0  # 0 disables clipping
    gradient_checkpointing: bool = False
    compile: bool = False
    lr: LRConfig = field(default_factory=LRConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)

    # keys of the flat layout → where they live now (read by ldm_system.config for its error message)
    MOVED: ClassVar[dict[str, str]] = {
        "lr_schedule": "lr.schedule", "warmup_steps": "lr.warmup_steps", "min_lr_ratio": "lr.min_ratio",
        "ema_module": "ema.module", "ema_decay": "ema.decay", "ema_warmup": "ema.warmup",
        "ckpt_every": "checkpoint.every", "keep_last": "checkpoint.keep_last",
        "log_every": "log.every", "preview_every": "log.preview_every", "progress": "log.progress",
        "max_nan_steps": "faults.max_nan_steps", "preempt_signals": "faults.preempt_signals",
        "dist_timeout_s": "faults.dist_timeout_s",
    }


__all__ = ["CheckpointConfig", "EMAConfig", "EngineConfig", "FaultConfig", "LRConfig", "LogConfig"]

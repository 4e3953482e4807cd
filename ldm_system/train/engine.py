"""The one training engine. Every model family plugs in as a `Task` (see task.py).

The loop, in one screen (`Trainer.fit`):

    for each step:
        batch = next(stream)
        with accelerator.accumulate(*modules):
            for name, loss in task.losses(modules, batch, step):
                if not finite on every rank: skip the step, count it
                backward → (on sync) clip → optimizer[name].step → scheduler → zero_grad
        EMA update · log · preview grid · checkpoint

Everything else (accelerate/DeepSpeed wrapping, checkpoint files, logging sinks) lives in the
neighbouring modules. `state_dict` / `load_state_dict` cover what accelerate does not save: the
step counter, NaN counters and the data-stream position, so that a resumed run continues the
same trajectory.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file

from ldm_system.config import dump_config
from ldm_system.models.ema import EMA
from ldm_system.train import checkpoint as ckpt
from ldm_system.train import launch_settings
from ldm_system.train.logging import RunLogger
from ldm_system.train.preemption import Preempted, PreemptionFlag, write_status
from ldm_system.train.prepare import Prepared, make_accelerator, prepare, warmup_cosine, zero_stage
from ldm_system.train.resume import (ResumePlan, advance_schedulers, check_shapes, ema_weights, load_weights,
                                     plan as resume_plan)
from ldm_system.train.engine_config import EngineConfig
from ldm_system.train.task import Task, call_hook


class NonFiniteLossError(RuntimeError):
    pass


def _to_device(batch: Any, device: torch.device) -> Any:
    if hasattr(batch, "to"):  # tensors and the data stream's Batch
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


class Trainer:
    """`Trainer(task, stream, cfg, micro_batch=..., resume=...)` builds, wraps and (optionally) restores;
    `fit()` runs the loop. `resume` is "latest" or a checkpoint folder; see resume.py for what
    is restored when."""

    def __init__(self, task: Task, stream: Iterable | Callable[[int, int], Iterable], cfg: EngineConfig,
                 run_config: Any = None, *, micro_batch: int | None = None, resume: str | None = None,
                 resume_weights_only: bool = False) -> None:
        cfg = launch_settings.resolve(cfg)  # mixed precision / accumulation: launcher unless the YAML says
        self.task, self.stream, self.cfg = task, stream, cfg
        self.out = Path(cfg.out_dir)
        self.accelerator = make_accelerator(cfg.grad_accum, cfg.mixed_precision, micro_batch, cfg.faults.dist_timeout_s)
        acc = self.accelerator
        self.run_config = _with_engine(run_config, cfg)
        self.log = RunLogger(self.out, acc.is_main_process, self.run_config)
        self.log.info(f"world size {acc.num_processes} ({acc.distributed_type.value}, ZeRO stage {zero_stage(acc)}), "
                      f"mixed precision {cfg.mixed_precision}, grad accumulation {cfg.grad_accum}, "
                      f"micro-batch {micro_batch}")
        if callable(stream) and not hasattr(stream, "__iter__"):  # a factory: (rank, world) → stream
            self.stream = stream(acc.process_index, acc.num_processes)
        # torch, numpy and python RNGs, per rank (the same initial weights on all ranks come from DDP's
        # broadcast); all three are in every checkpoint, so seeding them all makes checkpoints comparable.
        set_seed(cfg.seed + acc.process_index)
        call_hook(task, "to_device", acc.device)  # frozen helpers (autoencoder, text encoder) stay unwrapped
        modules = task.build()
        self.plan = None
        if resume:
            self.plan = resume_plan(resume, self.out, task=type(task).__name__, world_size=acc.num_processes,
                                    zero_stage=zero_stage(acc), weights_only=resume_weights_only, log=self.log.info)
        if self.plan is not None:
            check_shapes(self.plan.path, modules)
            if self.plan.weights_only:  # before prepare, so ZeRO's fp32 master copy starts from these weights
                load_weights(self.plan.path, modules)
        opts = task.optimizers(modules)
        factor = warmup_cosine(cfg.lr.warmup_steps, cfg.steps, cfg.lr.min_ratio, cfg.lr.schedule)
        scheds = {n: torch.optim.lr_scheduler.LambdaLR(o, factor) for n, o in opts.items()}
        self.p: Prepared = prepare(acc, modules, opts, scheds, cfg.gradient_checkpointing, cfg.compile)
        self.raw = modules
        self.ema = EMA(self._unwrapped(cfg.ema.module), cfg.ema.decay, cfg.ema.warmup) if cfg.ema.module else None
        self.step = 0
        self.nan_steps_total = 0
        self.nan_streak = 0
        self.preempt = PreemptionFlag(cfg.faults.preempt_signals)
        if self.plan is not None:
            self._restore(self.plan)

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "nan_steps_total": self.nan_steps_total, "nan_streak": self.nan_streak}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.nan_steps_total = int(state["nan_steps_total"])
        self.nan_streak = int(state["nan_streak"])

    def _unwrapped(self, name: str) -> torch.nn.Module:
        if name not in self.raw:
            raise ValueError(f"train.ema.module {name!r} is not one of the task's modules {sorted(self.raw)}")
        return self.raw[name]

    # ---- checkpoints -----------------------------------------------------------------------
    def save(self) -> Path:
        tmp = ckpt.tmp_dir(self.out / "checkpoints", self.step)
        try:
            return self._save(tmp)
        except BaseException:
            # A full disk or a crash on another rank: give the space back; `latest` still names the
            # previous complete checkpoint, because nothing was committed.
            if self.accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _save(self, tmp: Path) -> Path:
        acc, root = self.accelerator, self.out / "checkpoints"
        if acc.is_main_process:
            if tmp.exists():  # a leftover of a run killed while writing this very step
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        r = acc.process_index
        if hasattr(self.stream, "state_dict"):
            ckpt.write_json(tmp / f"loader_rank{r}.json", self.stream.state_dict())
        if self.ema is not None:
            save_file(self.ema.state_dict(), str(tmp / f"ema_rank{r}.safetensors"))
        self._save_consolidated(tmp / "weights")
        acc.wait_for_everyone()
        path = ckpt.step_dir(root, self.step)
        if acc.is_main_process:
            if self.run_config is not None:
                dump_config(self.run_config, tmp / "config.yaml")
            meta = {**self.state_dict(), "world_size": acc.num_processes, "zero_stage": zero_stage(acc),
                    "task": type(self.task).__name__, "ema_updates": self.ema.num_updates if self.ema else 0}
            meta["task_metadata"] = call_hook(self.task, "checkpoint_metadata")
            ckpt.write_json(tmp / "trainer.json", meta)
            ckpt.write_manifest(tmp)  # last: a folder without it is incomplete
            path = ckpt.commit(root, self.step, self.cfg.checkpoint.keep_last)
        acc.wait_for_everyone()
        return path

    def _save_consolidated(self, folder: Path) -> None:
        """Full weights of every module (raw and EMA) as safetensors, gathered from ZeRO-3 shards
        if needed; `ldm export`, `--init-from` and weights-only resumes read these, whatever the
        world size was."""
        acc = self.accelerator
        for name, module in self.p.modules.items():
            raw = acc.get_state_dict(module)  # a collective under ZeRO-3: every rank calls it
            ema = None
            if self.ema is not None and name == self.cfg.ema.module:
                with self.ema.swap():
                    # Copies taken inside the swap: without ZeRO-3, get_state_dict returns views of the
                    # live parameters, which hold the raw weights again once the swap is undone.
                    state = acc.get_state_dict(module)  # None on ranks other than 0 under ZeRO-3
                    ema = {k: v.detach().clone() for k, v in state.items()} if state is not None else None
            if acc.is_main_process:
                folder.mkdir(parents=True, exist_ok=True)
                save_file({k: v.contiguous() for k, v in raw.items()}, str(folder / f"{name}.safetensors"))
                if ema is not None:
                    save_file({k: v.contiguous() for k, v in ema.items()}, str(folder / f"{name}.ema.safetensors"))

    def _restore(self, plan: ResumePlan) -> None:
        acc, path = self.accelerator, plan.path
        self.load_state_dict(plan.meta)
        if plan.weights_only:
            advance_schedulers(self.p.schedulers, self.step)
            if self.ema is not None:
                state = ema_weights(path, self.cfg.ema.module)
                if state is not None:
                    self.ema.load_full(self._unwrapped(self.cfg.ema.module), state, int(plan.meta.get("ema_updates", 0)))
            self.log.warn(f"resumed weights only from {path} at step {self.step} ({plan.why}): new optimizer "
                          "state, the data stream starts a new pass")
            return
        acc.load_state(str(path))
        r = acc.process_index
        loader_file = path / f"loader_rank{r}.json"
        if hasattr(self.stream, "load_state_dict") and loader_file.exists():
            self.stream.load_state_dict(ckpt.read_json(loader_file))
        if self.ema is not None:
            self.ema.load_state_dict(load_file(str(path / f"ema_rank{r}.safetensors")))
        self.log.info(f"resumed from {path} at step {self.step}")

    # ---- the loop --------------------------------------------------------------------------
    def _all_finite(self, loss: torch.Tensor) -> bool:
        flag = torch.tensor([float(torch.isfinite(loss.detach()).all())], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "min").item() > 0)  # every rank agrees to skip

    def _apply(self, name: str, loss: torch.Tensor) -> float | None:
        acc, cfg = self.accelerator, self.cfg
        acc.backward(loss)
        grad_norm = None
        if acc.sync_gradients and cfg.max_grad_norm > 0:
            params = [p for p in self.p.modules[name].parameters() if p.requires_grad] if name in self.p.modules else [
                p for g in self.p.optimizers[name].param_groups for p in g["params"]]
            gn = acc.clip_grad_norm_(params, cfg.max_grad_norm)
            grad_norm = float(gn) if gn is not None else None
        self.p.optimizers[name].step()
        if acc.sync_gradients:  # one schedule step per optimizer step, whatever the world size
            self.p.schedulers[name].step()
        self.p.optimizers[name].zero_grad(set_to_none=True)
        return grad_norm

    def _skip_nonfinite(self, name: str) -> None:
        self.nan_steps_total += 1
        self.nan_streak += 1
        for opt in self.p.optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.log.warn(f"step {self.step}: non-finite {name!r} loss, step skipped ({self.nan_streak} in a row)")
        if self.nan_streak >= self.cfg.faults.max_nan_steps:
            path = self.save()
            raise NonFiniteLossError(
                f"{self.nan_streak} consecutive non-finite losses at step {self.step}; state saved to {path}. "
                "Lower the learning rate, check the data, or disable fp16."
            )

    def train_step(self, batch: Any) -> dict[str, float]:
        acc, stats = self.accelerator, {}
        with acc.accumulate(*self.p.modules.values()):
            with acc.autocast():
                for name, loss in self.task.losses(self.p.modules, batch, self.step):
                    if not self._all_finite(loss):
                        self._skip_nonfinite(name)
                        return {"skipped": 1.0}
                    gn = self._apply(name, loss)
                    stats[f"loss/{name}"] = float(loss.detach())
                    if gn is not None and math.isfinite(gn):
                        stats[f"grad_norm/{name}"] = gn
        self.nan_streak = 0
        if self.ema is not None and acc.sync_gradients:
            self.ema.update()
        for name, sched in self.p.schedulers.items():
            stats[f"lr/{name}"] = sched.get_last_lr()[0]
        stats.update(self.task.metrics())
        return stats

    def _out_of_time(self, start: float) -> bool:
        """Rank 0's clock (`budget_clock`) decides, so every rank stops at the same step."""
        late = torch.tensor([float(budget_clock(self.cfg.budget_clock) - start > 60.0 * self.cfg.max_minutes)],
                            device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            late = torch.tensor([float(self.accelerator.gather(late)[0])], device=self.accelerator.device)
        return bool(late.item())

    def _mean_over_ranks(self, stats: dict[str, float]) -> dict[str, float]:
        """Logged losses are the mean over ranks (the global-batch loss), not rank 0's share."""
        keys = sorted(k for k in stats if k.startswith("loss/"))
        if not keys or self.accelerator.num_processes == 1:
            return stats
        t = torch.tensor([stats[k] for k in keys], device=self.accelerator.device)
        t = self.accelerator.reduce(t, "mean")
        return {**stats, **{k: float(v) for k, v in zip(keys, t)}}

    def preview(self, batch: Any) -> None:
        ctx = self.ema.swap() if self.ema is not None else _null()
        with ctx, torch.no_grad():
            images = self.task.preview(self.p.modules, batch)  # every rank: ZeRO-3 gathers need all
        self.log.grid(images, f"preview_{self.step:08d}.png", step=self.step)
        self.accelerator.wait_for_everyone()

    def fit(self) -> dict[str, float]:
        acc, cfg = self.accelerator, self.cfg
        stream = iter(self.stream)
        bar = self.log.progress(cfg.steps, self.step, enabled=cfg.log.progress)
        stats: dict[str, float] = {}
        t0, seen = time.perf_counter(), 0
        batch = None
        start = budget_clock(cfg.budget_clock)
        while self.step < cfg.steps:
            if self.preempt.agreed(acc.device, lambda flag: acc.reduce(flag, "max")):
                bar.close()
                self._leave_preempted()
            if cfg.max_minutes and self._out_of_time(start):
                self.log.info(f"time budget of {cfg.max_minutes} min reached at step {self.step}")
                break
            batch = _to_device(next(stream), acc.device)
            stats = self.train_step(batch)
            self.step += 1
            seen += _batch_len(batch) * acc.num_processes
            bar.update(1)
            if self.step % cfg.log.every == 0 or self.step == cfg.steps:
                stats = self._mean_over_ranks(stats)
                stats["images_per_s"] = seen / max(1e-9, time.perf_counter() - t0)
                self.log.scalars(stats, self.step, bar)
                t0, seen = time.perf_counter(), 0
            if cfg.log.preview_every and self.step % cfg.log.preview_every == 0:
                self.preview(batch)
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 and self.step < cfg.steps:
                self.save()
        bar.close()
        if batch is not None:
            self.preview(batch)
        self.save()
        if acc.is_main_process:
            write_status("completed", self.step)
        self.preempt.close()
        self.log.close()
        return stats

    def _leave_preempted(self) -> None:
        """Every rank got here at the same step: write one checkpoint together, then leave."""
        path = self.save()
        if self.accelerator.is_main_process:
            write_status("preempted", self.step)
        got = self.preempt.received.name if self.preempt.received else "a signal on another rank"
        self.log.warn(f"preempted ({got}): checkpoint {path} written at step {self.step}; "
                      "exiting to be requeued (continue with --resume latest)")
        self.preempt.close()
        self.log.close()
        self.close()
        raise Preempted(self.step, path)

    def close(self) -> None:
        """End the run on every rank: wait for the others, then tear the process group down.

        Call it once nothing else needs collectives. A rank that exits with a live gloo or
        DeepSpeed communicator can abort in a C++ destructor after its work is done.
        """
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()


def _with_engine(run_config: Any, cfg: EngineConfig) -> Any:
    """The run config with its `train` section replaced by the resolved engine config, so that the
    run folder's config.yaml records the precision and accumulation that actually ran."""
    if run_config is not None and dataclasses.is_dataclass(run_config) and hasattr(run_config, "train"):
        return dataclasses.replace(run_config, train=cfg)
    return run_config


def budget_clock(kind: str) -> float:
    """Seconds on the clock that `train.max_minutes` counts: the wall clock, or ("cpu") this process's
    CPU time over its torch threads, which other work on the machine does not advance."""
    if kind == "cpu":
        return time.process_time() / max(1, torch.get_num_threads())
    return time.perf_counter()


def _batch_len(batch: Any) -> int:
    """Samples in a batch: the data stream's `Batch` says so; a tensor, or a tuple led by one, by its rows."""
    size = getattr(batch, "size", None)
    if isinstance(size, int):
        return size
    first = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) else 1


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False

"""Shared helpers of the stage-2 benchmarks: interleaved timing, the diffusion task, tables, launches.

Why interleaving: the benchmark machine has 2 cores shared with other jobs, so absolute speeds drift
by 2x within a minute. Each contender runs a short timed segment in turn (A B C, then C B A, ...),
and the medians over segments are compared, so a burst of outside load hits every contender alike.
"""
from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ldm_system.data.stream_worker import Batch
from ldm_system.diffusion.config import DiffusionConfig
from ldm_system.models.latent import LatentCodec
from ldm_system.models.unet import UNetConfig
from ldm_system.train.diffusion_task import DiffusionTask, OptimConfig

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def set_threads(n: int) -> None:
    """Intra-op threads per process. 1 by default: with other processes on the same 2 cores,
    OpenMP workers spin-wait for each other and a step's time can swing by 10x; one thread per
    process degrades smoothly under load instead."""
    torch.set_num_threads(n)


def parse_ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def parse_bools(text: str) -> tuple[bool, ...]:
    return tuple(v.strip().lower() in ("1", "t", "true", "y", "yes") for v in text.split(","))


def unet_config(sample_size: int, in_channels: int, widths: tuple[int, ...], attention: tuple[bool, ...],
                layers: int, head_dim: int = 32, groups: int = 32) -> UNetConfig:
    return UNetConfig(sample_size=sample_size, in_channels=in_channels, block_out_channels=widths,
                      attention_levels=attention, layers_per_block=layers, attention_head_dim=head_dim,
                      norm_num_groups=groups)


def diffusion_task(unet: UNetConfig, codec: LatentCodec | None = None, kind: str = "latent") -> DiffusionTask:
    """The stage-2 task with the LDM defaults (eps-prediction, scaled-linear betas, uniform weights)."""
    return DiffusionTask(unet, DiffusionConfig(), OptimConfig(lr=1e-4), codec or LatentCodec.identity(), kind)


def image_batch(images: torch.Tensor) -> Batch:
    """In-memory images (or latents) as the data stream's batch: unlabelled (-1), no captions."""
    n = images.shape[0]
    return Batch(images, torch.full((n,), -1, dtype=torch.long), [""] * n, [str(i) for i in range(n)])


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class TaskStepper:
    """One training step of a `DiffusionTask` without the engine: losses → backward → AdamW.

    Used where the benchmark is about the model's compute (latent vs pixel, online encoding), so
    that engine bookkeeping (measured on its own in engine_overhead.py) does not blur the ratio.
    """

    def __init__(self, task: DiffusionTask, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.task = task
        self.modules = task.build()
        self.opt = task.optimizers(self.modules)["unet"]

    def step(self, images: torch.Tensor) -> None:
        for _, loss in self.task.losses(self.modules, image_batch(images), 0):
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()


@dataclass
class Contender:
    name: str
    run: Callable[[], int]  # runs one timed segment, returns the number of images it trained on


def interleave(contenders: list[Contender], repeats: int, warmup: bool = True,
               log: Callable[[str], None] | None = print) -> dict[str, dict[str, list[float]]]:
    """images/s of every segment of every contender, run in alternating order (ABC CBA ABC ...).

    Returns {name: {"wall": [...], "cpu": [...]}}: per wall-clock second and per second of this
    process's CPU time. CPU time leaves out the time other processes hold the cores (not their
    effect on shared caches or sibling hyper-threads); with 1 thread it is the steadier of the two.
    """
    if warmup:  # first calls pay for allocator growth and lazy init
        for c in contenders:
            c.run()
    rates = {c.name: {"wall": [], "cpu": []} for c in contenders}
    for r in range(repeats):
        order = contenders if r % 2 == 0 else contenders[::-1]
        for c in order:
            w0, c0 = time.perf_counter(), time.process_time()
            n = c.run()
            rates[c.name]["wall"].append(n / (time.perf_counter() - w0))
            rates[c.name]["cpu"].append(n / (time.process_time() - c0))
        if log:
            log(f"  repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v['wall'][-1]:.2f} img/s" for k, v in rates.items()))
    return rates


def ratio_rows(rates: dict[str, dict[str, list[float]]], base: str, invert: bool = False) -> list[list[object]]:
    """Table rows: per clock, each contender's median images/s and its median per-repeat ratio to
    `base` (contender / base, or base / contender with `invert`)."""
    ratios = median_ratios(rates, base, invert)
    return [[name, kind, median(r[kind]), spread(r[kind]), f"{ratios[f'{name}, {kind}']:.2f}x"]
            for kind in ("wall", "cpu") for name, r in rates.items()]


def median_ratios(rates: dict[str, dict[str, list[float]]], base: str, invert: bool = False) -> dict[str, float]:
    """{"<contender>, <clock>": median per-repeat ratio to `base`}: the numbers behind `ratio_rows`."""
    out = {}
    for kind in ("wall", "cpu"):
        for name, r in rates.items():
            out[f"{name}, {kind}"] = median([(y / x if invert else x / y) for x, y in zip(r[kind], rates[base][kind])])
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """min–max of the segments, to show how noisy the run was."""
    return f"{min(values):.3g}–{max(values):.3g}"


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f}"


# ---- multi-process launches -----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(threads: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".venv" / "torch_extensions"))  # DeepSpeed's JIT op cache
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TRITON_INTERPRET", None)
    return env


def accelerate_launch(script: Path, args: list[str], mode: str, procs: int, threads: int = 1,
                      timeout: int = 900, ds_json: str | Path | None = None,
                      precision: str = "no") -> subprocess.CompletedProcess:
    """mode "ddp": DDP over gloo (ACCELERATE_USE_CPU=1 --multi_gpu); "zero1"/"zero2"/"zero3": DeepSpeed
    with the project's JSON in launch/deepspeed/ (what launch/accelerate/zeroN.yaml points at), passed
    on the command line so that `ds_json` can swap in a variant. `precision` is the launcher's
    `--mixed_precision` ("no", "bf16"); the worker must not contradict it."""
    cmd = [str(BIN / "accelerate"), "launch", "--num_processes", str(procs), "--num_machines", "1",
           "--main_process_port", str(free_port())]
    env = launch_env(threads)
    if mode == "ddp":
        env["ACCELERATE_USE_CPU"] = "1"
        cmd += ["--mixed_precision", precision] + (["--multi_gpu"] if procs > 1 else [])
    elif mode in ("zero1", "zero2", "zero3"):
        ds_json = ds_json or ROOT / "launch" / "deepspeed" / f"{mode}.json"
        cmd += ["--use_deepspeed", "--deepspeed_config_file", str(ds_json), "--mixed_precision", precision]
    else:
        raise ValueError(f"unknown launch mode {mode!r}")
    cmd += [str(script), *args]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
    return out

"""Steps/s of the real engine (`Trainer.fit` with `DiffusionTask`) vs a bare PyTorch loop with the
same UNet, batch, AdamW, loss and in-memory data, interleaved in one process.

    python benchmarks/engine_overhead.py                 # "small" UNet on 8x8x3, batch 16, ~3 min
    python benchmarks/engine_overhead.py --quick         # 5 repeats
    python benchmarks/engine_overhead.py --preset debug  # a tiny UNet: overhead is most visible
    python benchmarks/engine_overhead.py --profile       # + cProfile of the engine segments

How the loops are interleaved without touching the engine: the engine pulls its batches from a
stream, and this stream is a generator that, between engine segments, runs the bare-loop segments
itself. An engine segment is the time from handing out a segment's first batch to the engine's
request for the batch after its last one: exactly `--segment` full `fit` iterations (batch to
device, `train_step`, progress, logging). With segment = log_every = 10, each engine segment
contains one logging step (TensorBoard + metrics.jsonl), as in a real run.

Bare loop (DiT-style): t ~ U{0..T-1}, ε ~ N(0, 1), x_t = √ᾱ x₀ + √(1-ᾱ) ε, MSE(ε̂, ε), zero_grad,
backward, clip_grad_norm_(1.0), AdamW.step. The engine runs the same work with its defaults
(max_grad_norm 1.0, constant lr, fp32) plus what it adds: the finite-loss check, the accumulate
and autocast contexts, the lr scheduler, stats and logging. Single process, 1 thread.

A second, identical bare loop runs as a third contender: its ratio to the first is the noise
floor of the run (1.00 on a quiet machine). Each segment is timed by the wall clock and by the
process's CPU time; the latter is steadier when other jobs share the cores.
"""
from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import pstats
import tempfile
import time

import torch
import torch.nn.functional as F

import _results
from _common import diffusion_task, image_batch, median, num_params, set_threads, spread
from ldm_system.models.unet import PRESETS, Denoiser
from ldm_system.train.engine import Trainer
from ldm_system.train.engine_config import EngineConfig, LogConfig


class Clock:
    """Wall time and process CPU time of one segment. CPU time leaves out the time other processes
    hold the cores, but not all of their effect (shared caches, sibling hyper-threads)."""

    def __enter__(self):
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall0, time.process_time() - self.cpu0
        return False


class BareLoop:
    def __init__(self, task, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.net = Denoiser(task.unet_cfg)
        o = task.optim_cfg
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        self.alphas_cumprod = task.schedule.alphas_cumprod.float()

    def run(self, x0: torch.Tensor, steps: int) -> Clock:
        with Clock() as clock:
            for _ in range(steps):
                t = torch.randint(0, len(self.alphas_cumprod), (x0.shape[0],))
                noise = torch.randn_like(x0)
                ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
                x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise  # DDPM eq. 4
                loss = F.mse_loss(self.net(x_t, t), noise)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
                self.opt.step()
        return clock


PROFILE_FILTER = r"ldm_system/train/|accelerate/|clip_grad|lr_scheduler|tensorboard|diffusion_task|isfinite"
ENGINE, BARE, BARE2 = "Trainer.fit (engine)", "bare PyTorch loop", "bare loop, 2nd copy (noise floor)"


class InterleavedStream:
    """The engine's data stream. Around each engine segment it runs the bare loops' segments itself,
    in rotating order (E B B2, B2 B E, ...). A second, identical bare loop measures the noise floor:
    its ratio to the first one would be exactly 1 on a quiet machine."""

    def __init__(self, batch: torch.Tensor, bares: dict[str, BareLoop], warmup: int, segment: int, repeats: int,
                 profiler: cProfile.Profile | None = None) -> None:
        self.batch, self.bares, self.warmup, self.segment, self.repeats = batch, bares, warmup, segment, repeats
        self.profiler = profiler
        self.clocks: dict[str, list[Clock]] = {ENGINE: [], **{k: [] for k in bares}}

    @property
    def total_steps(self) -> int:
        """Steps the engine must run: warm-up + segments + the one whose request closes the last segment."""
        return self.warmup + self.segment * self.repeats + 1

    def __iter__(self):
        item = image_batch(self.batch)
        for _ in range(self.warmup):
            yield item
        for bare in self.bares.values():
            bare.run(self.batch, self.warmup)
        names = [ENGINE, *self.bares]
        for r in range(self.repeats):
            for name in (names if r % 2 == 0 else names[::-1]):
                if name != ENGINE:
                    self.clocks[name].append(self.bares[name].run(self.batch, self.segment))
                    continue
                if self.profiler:
                    self.profiler.enable()
                with Clock() as clock:  # closes when the engine asks for the batch after the segment
                    for _ in range(self.segment):
                        yield item
                if self.profiler:
                    self.profiler.disable()
                self.clocks[ENGINE].append(clock)
            print(f"  repeat {r + 1}/{self.repeats}: " + ", ".join(
                f"{k.split(' (')[0]} {self.segment / v[-1].wall:.2f}" for k, v in self.clocks.items()) + " steps/s")
        while True:
            yield item


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS), help="UNet preset (ldm_system.models.unet)")
    ap.add_argument("--side", type=int, default=8, help="latent side (8 = 32 px Fashion-MNIST with f = 4)")
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--segment", type=int, default=10, help="steps per timed segment (= the engine's log_every)")
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="cProfile the engine segments and print the top entries")
    _results.add_options(ap, quick="5 repeats")
    args = ap.parse_args()
    if args.quick:
        args.repeats = 5
    set_threads(args.threads)

    unet = dataclasses.replace(PRESETS[args.preset], sample_size=args.side, in_channels=args.channels)
    task = diffusion_task(unet)
    bares = {BARE: BareLoop(task), BARE2: BareLoop(task)}
    x0 = torch.randn(args.batch_size, args.channels, args.side, args.side, generator=torch.Generator().manual_seed(0))
    profiler = cProfile.Profile() if args.profile else None
    stream = InterleavedStream(x0, bares, args.warmup, args.segment, args.repeats, profiler)
    with tempfile.TemporaryDirectory() as out:
        cfg = EngineConfig(out_dir=out, steps=stream.total_steps,
                           log=LogConfig(every=args.segment, progress=False))
        trainer = Trainer(task, stream, cfg, micro_batch=args.batch_size)
        print(f"UNet preset {args.preset!r} on {args.side}x{args.side}x{args.channels}, "
              f"{num_params(bares[BARE].net) / 1e6:.2f}M params, batch {args.batch_size}, {args.threads} thread(s), "
              f"segments of {args.segment} steps")
        trainer.fit()

    res = _results.start("engine_overhead", args)
    rows, seg = [], args.segment
    for kind in ("wall", "cpu"):
        base = [seg / getattr(c, kind) for c in stream.clocks[BARE]]
        for name, clocks in stream.clocks.items():
            rate = [seg / getattr(c, kind) for c in clocks]
            ratio = [a / b for a, b in zip(rate, base)]  # per repeat: segments that ran back to back
            rows.append([name, kind, median(rate), spread(rate), median(rate) * args.batch_size, f"{median(ratio):.3f}"])
            res.ratio(f"{name} / bare, {kind}", median(ratio))
    print()
    print(res.table("rates", ["loop", "clock", "steps/s (median)", "segments min–max", "images/s", "vs bare loop"], rows))
    print()
    for kind in ("wall", "cpu"):
        # Paired differences: the engine's (and the copy's) segment minus the bare segment of the same repeat.
        diff = {k: median([1e3 * (getattr(a, kind) - getattr(b, kind)) / seg for a, b in zip(v, stream.clocks[BARE])])
                for k, v in stream.clocks.items() if k != BARE}
        print(f"{kind} ms per step over the bare loop (median of paired differences): "
              + ", ".join(f"{k.split(' (')[0]} {v:+.1f}" for k, v in diff.items()))
    print("goal: engine / bare >= 0.95")
    if profiler:
        # Only the engine's own layers (the model's forward/backward/AdamW are shared with the bare
        # loop). cProfile inflates Python-heavy code, so the timing table of a --profile run is biased.
        s = io.StringIO()
        pstats.Stats(profiler, stream=s).sort_stats("cumulative").print_stats(PROFILE_FILTER, 30)
        print(f"\nengine segments under cProfile ({seg * args.repeats} steps), engine-side entries only:")
        print(s.getvalue())
    res.save(args.json)

if __name__ == "__main__":
    main()

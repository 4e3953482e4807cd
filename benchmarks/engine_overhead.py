"""Steps/s of the real engine (`Trainer.fit` with `DiffusionTask`) vs a bare PyTorch loop with the
same UNet, batch, AdamW, loss and in-memory data, interleaved in one process.

    python benchmarks/engine_overhead.py                 # "small" UNet on 8x8x3, batch 16, ~2 min
    python benchmarks/engine_overhead.py --quick
    python benchmarks/engine_overhead.py --preset debug  # a tiny UNet: overhead is most visible
    python benchmarks/engine_overhead.py --profile       # cProfile the engine segments too

How the two are interleaved without touching the engine: the engine pulls its batches from a
stream, and this stream is a generator that, between engine segments, runs a bare-loop segment
itself. An engine segment is the time from handing out a segment's first batch to the engine's
request for the batch after its last: exactly `--segment` full `fit` iterations (batch to device,
`train_step`, progress, logging every `log_every` steps). With segment = log_every = 10, each engine
segment contains exactly one logging step (TensorBoard + metrics.jsonl), as in a real run.

Bare loop (DiT-style): t ~ U{0..T-1}, ε ~ N(0, 1), x_t = √ᾱ x₀ + √(1-ᾱ) ε, MSE(ε̂, ε), zero_grad,
backward, clip_grad_norm_(1.0), AdamW.step. The engine runs the same work with its defaults
(max_grad_norm 1.0, constant lr, fp32), plus what it does on top: the finite-loss check, the
accumulate context, the lr scheduler, stats and logging. Single process, 1 thread.
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

from _common import diffusion_task, median, num_params, set_threads, spread, table
from ldm_system.models.unet import PRESETS, Denoiser
from ldm_system.train.engine import EngineConfig, Trainer


class BareLoop:
    def __init__(self, task, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.net = Denoiser(task.unet_cfg)
        o = task.optim_cfg
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        self.alphas_cumprod = task.schedule.alphas_cumprod.float()

    def run(self, x0: torch.Tensor, steps: int) -> float:
        t0 = time.process_time()
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
        return time.process_time() - t0


class InterleavedStream:
    """The engine's data stream; runs bare-loop segments between the engine's segments (A B B A ...)."""

    def __init__(self, batch: torch.Tensor, bare: BareLoop, warmup: int, segment: int, repeats: int,
                 profiler: cProfile.Profile | None = None) -> None:
        self.batch, self.bare, self.warmup, self.segment, self.repeats = batch, bare, warmup, segment, repeats
        self.profiler = profiler
        self.engine_s: list[float] = []
        self.bare_s: list[float] = []

    @property
    def total_steps(self) -> int:
        """Steps the engine must run: warm-up + segments + the one whose request closes the last segment."""
        return self.warmup + self.segment * self.repeats + 1

    def __iter__(self):
        item = (self.batch,)
        for _ in range(self.warmup):
            yield item
        self.bare.run(self.batch, self.warmup)
        for r in range(self.repeats):
            if r % 2 == 1:
                self.bare_s.append(self.bare.run(self.batch, self.segment))
            if self.profiler:
                self.profiler.enable()
            t0 = time.process_time()
            for _ in range(self.segment):
                yield item
            self.engine_s.append(time.perf_counter() - t0)
            if self.profiler:
                self.profiler.disable()
            if r % 2 == 0:
                self.bare_s.append(self.bare.run(self.batch, self.segment))
            print(f"  repeat {r + 1}/{self.repeats}: engine {self.segment / self.engine_s[-1]:.2f} steps/s, "
                  f"bare {self.segment / self.bare_s[-1]:.2f} steps/s")
        while True:
            yield item


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS), help="UNet preset (ldm_system.models.unet)")
    ap.add_argument("--side", type=int, default=8, help="latent side (8 = 32 px Fashion-MNIST with f = 4)")
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--segment", type=int, default=10, help="steps per timed segment (= the engine's log_every)")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="cProfile the engine segments and print the top entries")
    ap.add_argument("--quick", action="store_true", help="4 repeats")
    args = ap.parse_args()
    if args.quick:
        args.repeats = 4
    set_threads(args.threads)

    unet = dataclasses.replace(PRESETS[args.preset], sample_size=args.side, in_channels=args.channels)
    task = diffusion_task(unet)
    bare = BareLoop(task)
    x0 = torch.randn(args.batch_size, args.channels, args.side, args.side, generator=torch.Generator().manual_seed(0))
    profiler = cProfile.Profile() if args.profile else None
    stream = InterleavedStream(x0, bare, args.warmup, args.segment, args.repeats, profiler)
    with tempfile.TemporaryDirectory() as out:
        cfg = EngineConfig(out_dir=out, steps=stream.total_steps, batch_size=args.batch_size,
                           log_every=args.segment, progress=False)
        trainer = Trainer(task, stream, cfg)
        print(f"UNet preset {args.preset!r} on {args.side}x{args.side}x{args.channels}, "
              f"{num_params(bare.net) / 1e6:.2f}M params, batch {args.batch_size}, {args.threads} thread(s), "
              f"segments of {args.segment} steps")
        trainer.fit()

    engine = [args.segment / s for s in stream.engine_s]
    plain = [args.segment / s for s in stream.bare_s]
    ratio = [e / b for e, b in zip(engine, plain)]
    print()
    print(table(["loop", "steps/s (median)", "segments min–max", "images/s (median)"], [
        ["Trainer.fit (engine)", median(engine), spread(engine), median(engine) * args.batch_size],
        ["bare PyTorch loop", median(plain), spread(plain), median(plain) * args.batch_size],
    ]))
    overhead_ms = 1e3 * (median(stream.engine_s) - median(stream.bare_s)) / args.segment
    print(f"\nengine / bare = {median(ratio):.3f} (median of per-repeat ratios; goal >= 0.95); "
          f"≈ {overhead_ms:.1f} ms per step")
    if profiler:
        s = io.StringIO()
        pstats.Stats(profiler, stream=s).sort_stats("cumulative").print_stats(35)
        print(s.getvalue())


if __name__ == "__main__":
    main()

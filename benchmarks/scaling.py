"""Training images/s of 2-rank DDP (gloo) vs 1 rank with the per-rank batch fixed, through the real
engine (`Trainer.train_step` with `DiffusionTask`), launched alternately in one run.

    python benchmarks/scaling.py                 # 2 launches of each contender, ~3 min
    python benchmarks/scaling.py --quick         # 1 launch each, 10 timed steps
    python benchmarks/scaling.py --two-threads   # adds "1 rank x 2 threads" as a third contender

Read this as a correctness check, not a scaling claim: the machine has 2 CPU cores, shared with the
OS and with other jobs, so 2 ranks with 1 thread each can at best double a 1-thread rank, and any
outside load eats into exactly the second core DDP needs. Each rank runs 1 intra-op thread.

Every launch is a fresh `accelerate launch` (1 process: plain; 2 processes: ACCELERATE_USE_CPU=1
--multi_gpu); the contenders alternate (A B, B A, ...) and the medians over launches are compared.
Inside a launch: warm-up steps, a barrier, then timed steps, then a barrier; images/s counts the
global batch (per-rank batch x ranks). Data are in-memory random latents (8x8x3, the Fashion-MNIST
demo's f = 4 latents); the UNet is the "small" preset widths.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import _results
from _common import accelerate_launch, median, parse_bools, parse_ints, spread, unet_config


def worker(args) -> None:
    from _common import diffusion_task
    from ldm_system.train.engine import Trainer
    from ldm_system.train.engine_config import EngineConfig, LogConfig

    unet = unet_config(args.side, 3, parse_ints(args.widths), parse_bools(args.attention), args.layers)
    cfg = EngineConfig(out_dir=args.out_dir, steps=10**6, log=LogConfig(progress=False))
    trainer = Trainer(diffusion_task(unet), [], cfg, micro_batch=args.batch_size)
    acc = trainer.accelerator
    z = torch.randn(args.batch_size, 3, args.side, args.side, generator=torch.Generator().manual_seed(acc.process_index))
    for _ in range(args.warmup):
        trainer.train_step((z,))
    acc.wait_for_everyone()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step((z,))
    acc.wait_for_everyone()
    dt = time.perf_counter() - t0
    if acc.is_main_process:
        world = acc.num_processes
        Path(args.out_dir, "result.json").write_text(json.dumps(
            {"world": world, "threads": torch.get_num_threads(), "seconds": dt,
             "images_per_s": args.steps * args.batch_size * world / dt}))
    trainer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=16, help="per rank")
    ap.add_argument("--side", type=int, default=8, help="latent side (8 = 32 px images with f = 4)")
    ap.add_argument("--widths", default="64,128")
    ap.add_argument("--attention", default="0,1")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per launch")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="launches per contender (each pays ~30 s of start-up)")
    ap.add_argument("--two-threads", action="store_true", help="also run 1 rank with 2 intra-op threads")
    _results.add_options(ap, quick="1 launch each, 10 timed steps")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.repeats, args.steps = 1, 10

    contenders = [("1 rank x 1 thread", 1, 1), ("2 ranks (DDP, gloo) x 1 thread", 2, 1)]
    if args.two_threads:
        contenders.append(("1 rank x 2 threads", 1, 2))
    passthrough = ["--batch-size", str(args.batch_size), "--side", str(args.side), "--widths", args.widths,
                   "--attention", args.attention, "--layers", str(args.layers), "--steps", str(args.steps),
                   "--warmup", str(args.warmup)]
    rates: dict[str, list[float]] = {name: [] for name, _, _ in contenders}
    for r in range(args.repeats):
        for name, procs, threads in (contenders if r % 2 == 0 else contenders[::-1]):
            with tempfile.TemporaryDirectory() as tmp:
                accelerate_launch(Path(__file__), ["--worker", "--out-dir", tmp, *passthrough], "ddp", procs, threads)
                rates[name].append(json.loads(Path(tmp, "result.json").read_text())["images_per_s"])
        print(f"  repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in rates.items()),
              file=sys.stderr)

    one = rates[contenders[0][0]]
    print(f"UNet {parse_ints(args.widths)} on {args.side}x{args.side}x3 latents, per-rank batch {args.batch_size}, "
          f"{args.steps} timed steps per launch, {args.repeats} launches each")
    res = _results.start("scaling", args)
    rows = []
    for name, r in rates.items():
        per_repeat = [a / b for a, b in zip(r, one)]
        rows.append([name, median(r), spread(r), f"{median(per_repeat):.2f}x"])
        res.ratio(f"{name} / 1 rank x 1 thread", median(per_repeat))
    print(res.table("rates", ["contender", "images/s (median)", "launches min–max", "vs 1 rank x 1 thread"], rows))
    res.save(args.json)


if __name__ == "__main__":
    main()

"""Stage-2 training images/s on aspect-ratio buckets vs square crops at the same pixel budget, through
the real streaming loader, measured side by side in one run.

    python benchmarks/buckets_vs_square.py            # batch 8, 7 repeats of 8 steps, ~1 min
    python benchmarks/buckets_vs_square.py --quick    # batch 4, 3 repeats
    python benchmarks/buckets_vs_square.py --json benchmarks/results/buckets_vs_square.json

Both contenders read latent shards (f = 4, c = 3) through `make_loader` (shard shuffle, shuffle buffer,
one bucket per batch on the bucketed side) and run the real `DiffusionTask` step (noise, timestep,
UNet, eps-MSE, AdamW) without the engine. The square side holds 16x16 latents (64x64 pixels); the
bucketed side holds the latents of `bucket_list(64, 16)` in a photo-like mix of aspect ratios (a
third square, the rest 4:3..16:9 landscapes and portraits, a few banners and strips). Bucket areas
lie within 25 % of 64^2, so the table also gives the mean latent pixels per image. What bucketing
could cost: the loader's grouping and its bookkeeping, and the UNet on non-square shapes; the goal is
at least 0.9x the square images/s.
"""
from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np
import torch

import _results
from _common import Contender, TaskStepper, diffusion_task, interleave, median_ratios, ratio_rows, set_threads, unet_config
from ldm_system.data.buckets import bucket_list, nearest_bucket
from ldm_system.data.stream import StreamConfig, make_loader
from ldm_system.data.writer import ShardWriter

F, C, SIZE = 4, 3, 64
# Aspect ratios (w / h) of a photo-like folder, with their weights.
MIX = {1.0: 6, 4 / 3: 3, 3 / 4: 3, 16 / 9: 2, 9 / 16: 2, 3 / 2: 1, 2 / 3: 1, 3.0: 0.5, 1 / 3: 0.5}


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def write_latents(folder: Path, shapes: list[tuple[int, int]], bucketed: bool) -> float:
    """Random latent shards of the given (w, h) latent shapes; returns the mean latent pixels per image."""
    rng = np.random.default_rng(0)
    with ShardWriter(folder, 64) as w:
        for i, (lw, lh) in enumerate(shapes):
            w.write(f"s{i:05d}", {"latent.npy": npy(rng.standard_normal((C, lh, lw)).astype(np.float32)), "cls": b"-1"})
    counts: dict[tuple[int, int], int] = {}
    for s in shapes:
        counts[s] = counts.get(s, 0) + 1
    meta = {"buckets": [{"width": a, "height": b, "count": n} for (a, b), n in counts.items()]} if bucketed else {}
    w.write_manifest(source="bench", split="train", kind="latents", image_size=None, channels=C, meta=meta)
    return float(np.mean([a * b for a, b in shapes]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8, help="steps per timed segment")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--widths", default="64,128,256")
    ap.add_argument("--threads", type=int, default=1)
    _results.add_options(ap, quick="batch 4, 3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.batch_size, args.repeats = 4, 3
    set_threads(args.threads)

    buckets = bucket_list(SIZE, 16)  # latent sides multiples of 4: the UNet below downsamples by 4
    rng = np.random.default_rng(1)
    aspects = rng.choice(list(MIX), size=args.samples, p=np.array(list(MIX.values())) / sum(MIX.values()))
    pixel = [nearest_bucket(round(1000 * a), 1000, buckets) for a in aspects]
    bucket_shapes = [(w // F, h // F) for w, h in pixel]
    tmp = Path(tempfile.mkdtemp(prefix="bench-buckets-"))
    sq_px = write_latents(tmp / "square", [(SIZE // F, SIZE // F)] * args.samples, bucketed=False)
    bk_px = write_latents(tmp / "buckets", bucket_shapes, bucketed=True)

    widths = tuple(int(v) for v in args.widths.split(","))
    attention = tuple(i == len(widths) - 1 for i in range(len(widths)))
    cfg = unet_config(SIZE // F, C, widths, attention, 1)
    steppers = {name: TaskStepper(diffusion_task(cfg, kind="latent")) for name in ("square", "buckets")}
    streams = {name: iter(make_loader(StreamConfig(shards=str(tmp / name), batch_size=args.batch_size, num_workers=0,
                                                   shuffle_buffer=256)))
               for name in steppers}
    seen_shapes: dict[str, set] = {name: set() for name in steppers}

    def segment(name: str):
        def run() -> int:
            n = 0
            for _ in range(args.steps):
                batch = next(streams[name])
                seen_shapes[name].add(tuple(batch.images.shape[2:]))
                steppers[name].step(batch.images)
                n += batch.size
            return n
        return run

    rates = interleave([Contender(n, segment(n)) for n in ("square", "buckets")], args.repeats)
    print(f"\nlatent pixels per image: square {sq_px:.0f}, buckets {bk_px:.0f} (mean); "
          f"{len(set(bucket_shapes))} buckets in the data, {len(seen_shapes['buckets'])} trained in the timed steps")
    res = _results.start("buckets_vs_square", args)
    print(res.table("rates", ["contender", "clock", "images/s (median)", "segments min–max",
                              "vs square (median per repeat)"], ratio_rows(rates, "square")))
    ratios = median_ratios(rates, "square")
    res.ratios.update({k: v for k, v in ratios.items() if k.startswith("buckets")})
    for kind in ("wall", "cpu"):  # per latent pixel: the bucketed images are a little smaller
        res.ratio(f"buckets per latent pixel, {kind}", ratios[f"buckets, {kind}"] * bk_px / sq_px)
    res.settings.update({"latent_pixels_square": sq_px, "latent_pixels_buckets": round(bk_px, 1),
                         "buckets_in_data": len(set(bucket_shapes))})
    res.save(args.json)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()

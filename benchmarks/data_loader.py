"""Images/s of the shard streaming loader vs a plain folder-of-PNGs Dataset, in one run.

Both pipelines decode the same PNG bytes with Pillow and apply the same transforms
(ldm_system.data.transforms: channel policy, resize + crop to --image-size, random flip, [-1, 1]),
with the same DataLoader worker count and batch size. The folder baseline is the usual
`torch.utils.data.Dataset` + `DataLoader(shuffle=True)` over one PNG file per image.

    python benchmarks/data_loader.py --num-images 10000 --image-size 32 --workers 2

Each pipeline runs one full epoch per repeat after a warm-up batch; the best repeat counts.
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

import _results
from ldm_system.data.pack import pack
from ldm_system.data.stream import StreamConfig, make_loader
from ldm_system.data.tario import read_samples
from ldm_system.data.transforms import decode_image, hflip, resize_and_crop, to_channels, to_tensor_pm1

FLIP_PROBABILITY = 0.5


class PngFolder(Dataset):
    """One PNG per image in <root>/<label>/<key>.png, read with Pillow on every access."""

    def __init__(self, root: Path, image_size: int, channels: int) -> None:
        self.items = sorted(
            (Path(d) / f, int(Path(d).name)) for d, _, files in os.walk(root) for f in files
        )
        self.image_size = image_size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        img = to_channels(decode_image(path.read_bytes()), self.channels)
        img = resize_and_crop(img, self.image_size, "center")
        if random.random() < FLIP_PROBABILITY:
            img = hflip(img)
        return to_tensor_pm1(img), label


def export_folder(shard_dir: Path, out: Path) -> int:
    """Write every packed PNG to its own file, so both pipelines read identical bytes."""
    count = 0
    for shard in sorted(shard_dir.glob("shard-*.tar")):
        for raw in read_samples(str(shard), lambda *p: None):
            folder = out / raw.entries["cls"].decode()
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{raw.key}.png").write_bytes(raw.entries["png"])
            count += 1
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num-images", type=int, default=10000)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--source", default="builtin:fashion-mnist")
    _results.add_options(ap, quick="2,000 images, 1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.num_images, args.repeats = 2000, 1
    torch.set_num_threads(1)  # the main process only receives batches; avoid thread oversubscription

    with tempfile.TemporaryDirectory() as tmp:
        shards, folder = Path(tmp) / "shards", Path(tmp) / "folder"
        start = time.perf_counter()
        manifest = pack(args.source, shards, shard_size=args.shard_size, limit=args.num_images)
        pack_s = time.perf_counter() - start
        n = export_folder(shards, folder)
        assert n == manifest.num_samples
        channels = manifest.channels

        stream_cfg = StreamConfig(shards=str(shards), batch_size=args.batch_size, num_workers=args.workers,
                                  image_size=args.image_size, crop="center", flip=True,
                                  shuffle_buffer=1000, infinite=False)
        folder_ds = PngFolder(folder, args.image_size, channels)
        stream_rates, folder_rates = [], []
        for _ in range(args.repeats):
            stream_rates.append(_rate((b.images for b in make_loader(stream_cfg)), n))
            folder_loader = DataLoader(folder_ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
            folder_rates.append(_rate((images for images, _ in folder_loader), n))
        stream_best, folder_best = max(stream_rates), max(folder_rates)
        print(f"images: {n} x {args.image_size}px, {channels} channel(s); batch {args.batch_size}; "
              f"{args.workers} workers; {os.cpu_count()} CPUs")
        print(f"pack ({args.source}, {n} images, {len(manifest.shards)} shards): {pack_s:.1f} s "
              f"= {n / pack_s:.0f} images/s")
    res = _results.start("data_loader", args)
    res.ratio("stream / folder", stream_best / folder_best)
    print(res.table("rates", ["pipeline", "images/s (best run)", "runs"], [
        [f"pack ({args.source}, {n} images, {len(manifest.shards)} shards)", f"{n / pack_s:.0f}", f"{pack_s:.1f} s"],
        ["stream loader (shards)", f"{stream_best:.0f}", _fmt(stream_rates)],
        ["folder Dataset (PNGs)", f"{folder_best:.0f}", _fmt(folder_rates)],
        ["ratio stream / folder", f"{stream_best / folder_best:.2f}", ""],
    ]))
    res.save(args.json)


def _rate(batches, n: int) -> float:
    """Images/s over one epoch of image batches (B, C, H, W), excluding the first (warm-up) batch."""
    it = iter(batches)
    first = len(next(it))
    seen = 0
    start = time.perf_counter()
    for images in it:
        seen += len(images)
    elapsed = time.perf_counter() - start
    if first + seen != n:
        raise RuntimeError(f"epoch delivered {first + seen} images, expected {n}")
    return seen / elapsed


def _fmt(rates: list[float]) -> str:
    return ", ".join(f"{r:.0f}" for r in rates)


if __name__ == "__main__":
    main()

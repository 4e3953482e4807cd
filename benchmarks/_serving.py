"""Shared helpers of the sampling and inversion benchmarks: the model, held-out real images, features."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from _common import ROOT

DEFAULT_MODEL = ROOT / "outputs" / "demo" / "model"


def load_model(path: str | Path):
    from ldm_system.serving.pipeline import LDMPipeline

    path = Path(path)
    if not (path / "ldm.json").exists():
        raise SystemExit(f"{path}: no exported model there. Run `ldm demo` (writes {DEFAULT_MODEL}) or pass --model "
                         "an `ldm export` folder.")
    return LDMPipeline.from_pretrained(path)


def held_out_images(pipe, count: int, offset: int = 0, shards: str | None = None) -> tuple[torch.Tensor, list[int]]:
    """`count` real images the model never trained on, as the model sees them ((N, C, S, S) in [-1, 1]).

    Default: the Fashion-MNIST *test* split (stage 2 trains on the train split), resized with the
    one image policy (ldm_system.images); `shards` reads a packed image-shard folder instead.
    """
    if shards:
        from ldm_system.data.stream import first_images

        x, y = first_images(shards, offset + count, with_labels=True)
        return x[offset:], [int(v) for v in y[offset:]]
    from PIL import Image

    from ldm_system.data.sources.fashion_mnist import load_fashion_mnist
    from ldm_system.images import fit_to_tensor

    images, labels = load_fashion_mnist("test")
    if offset + count > len(images):
        raise SystemExit(f"asked for test images {offset}..{offset + count}, the split has {len(images)}")
    out = [fit_to_tensor(Image.fromarray(images[i]), pipe.image_size, pipe.image_channels)
           for i in range(offset, offset + count)]
    return torch.cat(out), [int(v) for v in labels[offset:offset + count]]


@torch.no_grad()
def features(extractor, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([extractor(images[i:i + batch]) for i in range(0, images.shape[0], batch)])


class Clock:
    """Wall and process-CPU seconds of a block (CPU time leaves out time other jobs hold the cores)."""

    def __enter__(self) -> "Clock":
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


__all__ = ["Clock", "DEFAULT_MODEL", "features", "held_out_images", "load_model"]

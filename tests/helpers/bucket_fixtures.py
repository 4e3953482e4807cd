"""A user's folder of mixed shapes and caption layouts, built in the test, and its bucketed shards and latents."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ldm_fixtures import AE_DEBUG

# (name, width, height): portraits, landscapes, a banner, a strip, a thumbnail, squares.
SHAPES = [("p34", 60, 80), ("p916", 54, 96), ("l169", 128, 72), ("l21", 80, 40), ("b41", 160, 40),
          ("s110", 20, 200), ("thumb", 20, 30), ("sq1", 50, 50), ("sq2", 64, 64), ("p23", 40, 60),
          ("l32", 90, 60), ("sq3", 33, 33)]


def build_folder(root: Path) -> None:
    """Random RGB images of SHAPES; captions as name.txt, name.caption and metadata.jsonl rows in turn."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (name, w, h) in enumerate(SHAPES):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{name}.png")
        if i % 3 == 0:
            (root / f"{name}.txt").write_text(f"a {name} photo", encoding="utf-8")
        elif i % 3 == 1:
            (root / f"{name}.caption").write_text(f"{name}, tag one, tag two", encoding="utf-8")
    rows = [{"file_name": f"{n}.png", "text": f"meta {n}"} for i, (n, _, _) in enumerate(SHAPES) if i % 3 == 2]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")


def build_bucket_latents(root: Path):
    """folder -> bucketed 32^2 grayscale shards -> 2-step debug KL-f4 -> latents. Returns (image manifest,
    latent manifest); the folders are root/images and root/latents."""
    from ldm_system.config import load_config
    from ldm_system.data.encode import encode_shards
    from ldm_system.data.pack import pack
    from ldm_system.train.runs import AERunConfig, run_autoencoder

    build_folder(root / "src")
    m = pack(str(root / "src"), root / "images", image_size=32, buckets=True, bucket_step=8, channels=1, shard_size=4)
    cfg = load_config(AERunConfig, AE_DEBUG, [f"data.shards={root / 'images'}", f"train.out_dir={root / 'ae'}",
                                               "data.batch_size=2", "train.steps=2", "train.checkpoint.every=0",
                                               "scale_batches=100", "loss.disc_start=1"])
    run_autoencoder(cfg)
    lat = encode_shards(root / "ae" / "autoencoder", root / "images", root / "latents", batch_size=4, progress=False)
    return m, lat

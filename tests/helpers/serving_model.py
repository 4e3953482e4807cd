"""Build a small *trained* two-stage model in-process (pack → stage 1 → encode → stage 2 → export).

Used by the serving and pipeline integration tests (through the session fixture in
tests/integration/conftest.py). The sizes are the smallest at which the denoiser is smooth enough
for the inversion/solver claims the tests make, while keeping the whole build around a minute on a
loaded 2-core machine. Everything runs in this process: subprocesses would pay the torch/diffusers
import (several seconds each) five times over.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AE_CONFIG = REPO / "configs/autoencoder/fmnist-kl-f4-debug.yaml"
LDM_CONFIG = REPO / "configs/ldm/fmnist-debug.yaml"
DONE = "BUILD_DONE"


@dataclass(frozen=True)
class BuildSizes:
    images: int = 2000  # Fashion-MNIST test split, 32x32
    ae_steps: int = 40
    ae_batch: int = 16
    ldm_steps: int = 200
    ldm_batch: int = 32
    ldm_lr: float = 1e-3


def build_trained_model(root: Path, sizes: BuildSizes = BuildSizes()) -> Path:
    """Write data, runs and the exported model under `root`; returns the export folder.

    Idempotent: a finished build (marker file present) is reused as is.
    """
    from ldm_system.config import load_config
    from ldm_system.data.encode import encode_shards
    from ldm_system.data.pack import pack
    from ldm_system.serving.export import export_checkpoint
    from ldm_system.train.runs import AERunConfig, LDMRunConfig, run_autoencoder, run_ldm

    root = Path(root)
    export = root / "model"
    if (root / DONE).exists():
        return export
    timings = {}
    t0 = time.perf_counter()
    shards = root / "shards"
    pack("builtin:fashion-mnist", shards, split="test", image_size=32, limit=sizes.images, overwrite=True)
    timings["pack"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ae_cfg = load_config(AERunConfig, AE_CONFIG, [
        f"data.shards={shards}", f"data.batch_size={sizes.ae_batch}", f"train.out_dir={root / 'ae'}",
        f"train.steps={sizes.ae_steps}", f"train.checkpoint.every={sizes.ae_steps}", f"train.log.every={sizes.ae_steps}",
        # no GAN: the discriminator doubles the step cost, and these tests measure the denoiser, not the codec
        f"loss.disc_start={sizes.ae_steps + 1}",
    ])
    ae_dir = run_autoencoder(ae_cfg)
    timings["stage1"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    latents = root / "latents"
    encode_shards(ae_dir, shards, latents, batch_size=256, overwrite=True, progress=False)
    timings["encode"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ldm_cfg = load_config(LDMRunConfig, LDM_CONFIG, [
        f"data.shards={latents}", f"data.batch_size={sizes.ldm_batch}", f"train.out_dir={root / 'ldm'}",
        f"train.steps={sizes.ldm_steps}", f"train.checkpoint.every={sizes.ldm_steps}", f"train.log.every={sizes.ldm_steps}",
        f"optim.lr={sizes.ldm_lr}", "train.ema.decay=0.99", "preview.num_images=4", "preview.steps=5",
    ])
    run_ldm(ldm_cfg)
    timings["stage2"] = time.perf_counter() - t0
    export_checkpoint(root / "ldm", export)
    (root / DONE).write_text(" ".join(f"{k}={v:.1f}s" for k, v in timings.items()) + "\n")
    return export


__all__ = ["BuildSizes", "build_trained_model"]

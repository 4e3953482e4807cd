"""`ldm demo`: the whole two-stage pipeline on Fashion-MNIST at 32×32, on a CPU in ~10 minutes.

    1. pack the built-in dataset into WebDataset shards (train and test splits)
    2. stage 1: KL-f4 autoencoder (configs/autoencoder/fmnist-kl-f4.yaml), latent scale measured
    3. `ldm data encode`: train images → latent shards (scaled, with the KL posterior)
    4. stage 2: class-conditional LDM (configs/ldm/fmnist-kl-f4.yaml), EMA, checkpoints
    5. export, then: a class-by-class sample grid, a DDIM inversion of test images with its PSNR,
       and one class edit — all written under OUT and listed at the end.

Each training stage has a wall-clock budget (train.max_minutes), so the demo finishes in time on
slow machines; on fast ones it simply runs all its steps. `--quick` is a smoke test of the wiring.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ldm_system.config import load_config
from ldm_system.images import save_grid

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _pack(split: str, out: Path, quick: bool) -> Path:
    from ldm_system.data.manifest import read_manifest
    from ldm_system.data.pack import pack

    want = 2000 if quick else None
    if (out / "manifest.json").exists():
        m = read_manifest(out)
        if want is None or m.num_samples <= want:
            _say(f"reusing {out} ({m.num_samples} {split} images)")
            return out
    m = pack("builtin:fashion-mnist", out, image_size=32, split=split, limit=want, overwrite=True)
    _say(f"packed {m.num_samples} {split} images into {len(m.shards)} shards at {out}")
    return out


def run_demo(out: Path, quick: bool = False) -> int:
    from ldm_system.config_ranges import CHECKS
    from ldm_system.data.encode import encode_shards
    from ldm_system.serving.export import export_checkpoint
    from ldm_system.serving.metrics import autoencoder_psnr
    from ldm_system.serving.pipeline import LDMPipeline
    from ldm_system.train.runs import AERunConfig, LDMRunConfig, run_autoencoder, run_ldm

    t0 = time.perf_counter()
    torch.manual_seed(0)
    data = out.parent / "data" if out.name == "demo" else out / "data"
    train = _pack("train", data / ("fmnist-quick" if quick else "fmnist") / "train", quick)
    test = _pack("test", data / ("fmnist-quick" if quick else "fmnist") / "test", quick)

    ae_over = [f"data.shards={train}", f"train.out_dir={out / 'stage1'}"]
    ldm_over = [f"data.shards={out / 'latents'}", f"train.out_dir={out / 'stage2'}"]
    if quick:
        ae_over += ["train.steps=10", "loss.disc_start=5", "train.log.preview_every=0", "train.checkpoint.every=0", "scale_batches=2"]
        ldm_over += ["train.steps=20", "train.log.preview_every=0", "train.checkpoint.every=0", "preview.steps=5"]
    ae_cfg = load_config(AERunConfig, CONFIGS / "autoencoder" / "fmnist-kl-f4.yaml", ae_over, checks=CHECKS)
    _say(f"stage 1: training the KL-f4 autoencoder ({ae_cfg.train.steps} steps, ≤ {ae_cfg.train.max_minutes} min)")
    ae_dir = run_autoencoder(ae_cfg)

    _say("encoding the training images into latent shards")
    m = encode_shards(ae_dir, train, out / "latents", batch_size=256, overwrite=True, progress=False)
    _say(f"{m.num_samples} latents of shape {m.meta['latent_shape']}, latent scale {m.meta['latent_scale']:.4f}")

    ldm_cfg = load_config(LDMRunConfig, CONFIGS / "ldm" / "fmnist-kl-f4.yaml", ldm_over, checks=CHECKS)
    _say(f"stage 2: training the class-conditional LDM ({ldm_cfg.train.steps} steps, ≤ {ldm_cfg.train.max_minutes} min)")
    run_ldm(ldm_cfg)
    model = export_checkpoint(out / "stage2", out / "model")
    _say(f"exported the model to {model}")

    pipe = LDMPipeline.from_pretrained(model)
    steps = 10 if quick else 50
    k = len(pipe.classes)
    rows = 4
    classes = [c for _ in range(rows) for c in range(k)]  # one column per class
    images = pipe.sample(len(classes), classes=classes, steps=steps, guidance=3.0, seed=0)
    save_grid(images, out / "samples.png", nrow=k)
    _say(f"sample grid (columns: {', '.join(pipe.classes)}) → {out / 'samples.png'}")

    from ldm_system.data.stream import StreamConfig, make_loader

    batch = next(iter(make_loader(StreamConfig(shards=str(test), batch_size=8, num_workers=0, shuffle_buffer=0,
                                               shard_shuffle=False, infinite=False))))
    inv = pipe.invert(batch.images, classes=batch.labels.tolist(), steps=steps, fixed_point_iters=1)
    save_grid(torch.cat([inv.images, inv.reconstruction]), out / "inversion.png", nrow=8)
    ceiling = autoencoder_psnr(pipe.codec, inv)
    _say(f"DDIM inversion of 8 test images ({steps} steps, 1 fixed-point iteration): mean PSNR "
         f"{sum(inv.psnr) / len(inv.psnr):.2f} dB (the autoencoder's own round trip: {sum(ceiling) / len(ceiling):.2f} dB, "
         f"the ceiling), SSIM {sum(inv.ssim) / len(inv.ssim):.3f}, latent MSE "
         f"{sum(inv.latent_mse) / len(inv.latent_mse):.2e}  (top row input, bottom row reconstruction) → {out / 'inversion.png'}")

    src = int(batch.labels[0])
    tgt = (src + 5) % k  # e.g. T-shirt → Sandal, Trouser → Shirt
    edits = [pipe.edit(batch.images[:1], src, tgt, steps=steps, keep_steps=ks) for ks in (steps // 10, steps // 5, steps * 2 // 5)]
    save_grid(torch.cat([batch.images[:1], *edits]), out / "edit.png", nrow=4)
    _say(f"edit {pipe.classes[src]} → {pipe.classes[tgt]} keeping 10/20/40% of the steps → {out / 'edit.png'}")
    _say(f"done in {(time.perf_counter() - t0) / 60:.1f} min. Outputs in {out}: stage1/ (autoencoder, previews), "
         "latents/, stage2/ (checkpoints, previews, tensorboard), model/ (exported), samples.png, inversion.png, edit.png")
    return 0


__all__ = ["run_demo"]

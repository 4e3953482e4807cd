"""Training images/s on pre-encoded latents vs encoding every batch online with the frozen KL-f4
autoencoder, measured side by side in one run.

    python benchmarks/encode_online_vs_shards.py           # batch 8 at 64x64, 5 repeats, ~1.5 min
    python benchmarks/encode_online_vs_shards.py --quick   # batch 4, 3 repeats
    python benchmarks/encode_online_vs_shards.py --autoencoders kl-f4

Contenders (same UNet, same batch size, same `DiffusionTask` step with AdamW):
- "pre-encoded": the batch already holds scaled latents (what `ldm data encode` shards give);
- "online <ae>": the batch holds 64x64 images and `DiffusionTask.latents` encodes them through
  `LatentCodec` (fp32, no_grad, posterior sample) before the UNet step. Autoencoders:
    kl-f4        the LDM first-stage preset (autoencoders.config.PRESETS["kl-f4"]: channels
                 128-256-512, 2 res blocks per level, mid-block attention);
    fmnist-kl-f4 the `model:` section of configs/autoencoder/fmnist-kl-f4.yaml, the Fashion-MNIST
                 demo's small autoencoder (its widths are printed), built with 3 input channels.
  Weights are freshly initialised: encoding cost does not depend on their values.

Data are in-memory random tensors; reading shards is left out on both sides (benchmarks/data_loader.py
measures the loader, and decoding a 64x64 PNG or a small .npy is tiny next to either step).
"""
from __future__ import annotations

import argparse
import dataclasses

import torch
import yaml

import _results
from _common import (ROOT, Contender, TaskStepper, diffusion_task, interleave, median_ratios, num_params, parse_bools,
                     parse_ints, ratio_rows, set_threads, unet_config)
from autoencoders.config import AutoencoderConfig, preset
from autoencoders.factory import build_autoencoder
from ldm_system.config import from_dict
from ldm_system.models.latent import LatentCodec


def autoencoder_config(name: str, channels: int) -> AutoencoderConfig:
    if name == "fmnist-kl-f4":
        path = ROOT / "configs" / "autoencoder" / "fmnist-kl-f4.yaml"
        cfg = from_dict(AutoencoderConfig, yaml.safe_load(path.read_text())["model"], source=str(path))
    else:
        cfg = preset(name).model
    return dataclasses.replace(cfg, in_channels=channels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--autoencoders", default="kl-f4,fmnist-kl-f4", help="comma-separated: kl-f4, fmnist-kl-f4, kl-f4-debug")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--widths", default="64,128,256")
    ap.add_argument("--attention", default="0,0,1")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="steps per timed segment of the cheap contenders")
    ap.add_argument("--threads", type=int, default=1)
    _results.add_options(ap, quick="batch 4, 3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.batch_size, args.repeats = 4, 3
    set_threads(args.threads)

    B, S = args.batch_size, args.image_size
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(B, args.channels, S, S, generator=gen) * 2 - 1
    contenders, notes = [], []
    unet = None
    for name in args.autoencoders.split(","):
        ae_cfg = autoencoder_config(name, args.channels)
        torch.manual_seed(0)
        ae = build_autoencoder(ae_cfg)
        codec = LatentCodec(ae, scale=1.0)  # the scale only multiplies; its value does not change timing
        side = S // ae_cfg.f
        unet = unet or unet_config(side, ae_cfg.latent_channels, parse_ints(args.widths), parse_bools(args.attention), args.layers)
        stepper = TaskStepper(diffusion_task(unet, codec, kind="image"))
        enc = num_params(ae.vae.encoder) + num_params(ae.vae.quant_conv)
        # The big autoencoder is ~5x slower per step than the UNet alone: one step per segment.
        steps = 1 if ae_cfg.channels[0] >= 128 else args.steps
        contenders.append(Contender(f"online {name}", _segment(stepper, images, steps, B)))
        notes.append(f"{name}: channels {ae_cfg.channels}, {ae_cfg.layers_per_block} res block(s)/level, "
                     f"mid attention {ae_cfg.mid_attention}, encoder {enc / 1e6:.2f}M params")
    latents = torch.randn(B, unet.in_channels, unet.sample_size, unet.sample_size, generator=gen)
    pre = TaskStepper(diffusion_task(unet, kind="latent"))
    contenders.insert(0, Contender("pre-encoded", _segment(pre, latents, args.steps, B)))

    print(f"images {S}x{S}x{args.channels} -> latents {tuple(latents.shape[1:])}; UNet {unet.block_out_channels} "
          f"({num_params(pre.modules['unet']) / 1e6:.2f}M params); batch {B}; {args.threads} thread(s)")
    for n in notes:
        print("  " + n)
    rates = interleave(contenders, args.repeats)
    print()
    res = _results.start("encode_online_vs_shards", args)
    print(res.table("rates", ["data", "clock", "images/s (median)", "segments min–max",
                              "pre-encoded speed-up (median per repeat)"], ratio_rows(rates, "pre-encoded", invert=True)))
    res.ratios.update(median_ratios(rates, "pre-encoded", invert=True))
    res.save(args.json)

def _segment(stepper: TaskStepper, data: torch.Tensor, steps: int, batch: int):
    def run() -> int:
        for _ in range(steps):
            stepper.step(data)
        return steps * batch
    return run


if __name__ == "__main__":
    main()

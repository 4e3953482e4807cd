"""Training images/s of latent diffusion (f = 4, 16x16xc latents) vs pixel-space diffusion (64x64xC),
same UNet widths, same batch size, measured side by side in one run.

This is LDM's central claim (Rombach et al. 2022, sec. 3 and fig. 2): the UNet works on a spatially
f² = 16x smaller tensor, so a step costs ~1/16 of the convolutions and far less attention.

    python benchmarks/latent_vs_pixel.py                   # defaults below, ~1.5 min
    python benchmarks/latent_vs_pixel.py --quick           # batch 4, 3 repeats
    python benchmarks/latent_vs_pixel.py --widths 64,128 --attention 0,1 --layers 2

Both sides run the real stage-2 task (`DiffusionTask.losses`: noise, timestep, forward, eps-MSE)
with AdamW; the engine is left out on purpose (its overhead is engine_overhead.py's subject).
Data are in-memory random tensors (timing does not depend on content): latents N(0, 1) as if
pre-encoded and scaled, pixels uniform in [-1, 1]. The UNet config is identical except
`sample_size` and `in_channels`, which must follow the data.
"""
from __future__ import annotations

import argparse

import torch

import _results
from _common import (Contender, TaskStepper, diffusion_task, interleave, median_ratios, num_params, parse_bools, parse_ints,
                     ratio_rows, set_threads, unet_config)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--f", type=int, default=4, help="autoencoder downsampling factor")
    ap.add_argument("--pixel-channels", type=int, default=3, help="RGB images, as in LDM")
    ap.add_argument("--latent-channels", type=int, default=3, help="KL-f4 has c = 3")
    ap.add_argument("--widths", default="64,128,256", help="UNet block_out_channels")
    ap.add_argument("--attention", default="0,0,1", help="attention per level (lowest resolution only by default)")
    ap.add_argument("--layers", type=int, default=1, help="layers_per_block")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pixel-steps", type=int, default=1, help="steps per pixel-space timed segment")
    ap.add_argument("--latent-steps", type=int, default=8, help="steps per latent timed segment (~same duration)")
    ap.add_argument("--threads", type=int, default=1)
    _results.add_options(ap, quick="batch 4, 3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.batch_size, args.repeats = 4, 3
    set_threads(args.threads)

    widths, attention = parse_ints(args.widths), parse_bools(args.attention)
    side = args.image_size // args.f
    lat_cfg = unet_config(side, args.latent_channels, widths, attention, args.layers)
    pix_cfg = unet_config(args.image_size, args.pixel_channels, widths, attention, args.layers)
    latent = TaskStepper(diffusion_task(lat_cfg, kind="latent"))
    pixel = TaskStepper(diffusion_task(pix_cfg, kind="image"))  # identity codec = pixel-space diffusion

    B = args.batch_size
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(B, args.latent_channels, side, side, generator=gen)
    x = torch.rand(B, args.pixel_channels, args.image_size, args.image_size, generator=gen) * 2 - 1

    def segment(stepper: TaskStepper, data: torch.Tensor, steps: int):
        def run() -> int:
            for _ in range(steps):
                stepper.step(data)
            return steps * B
        return run

    print(f"UNet widths {widths}, attention {attention}, {args.layers} layer(s)/block, "
          f"{num_params(latent.modules['unet']) / 1e6:.2f}M params (latent) / "
          f"{num_params(pixel.modules['unet']) / 1e6:.2f}M (pixel); batch {B}; {args.threads} thread(s)")
    rates = interleave([
        Contender(f"latent {side}x{side}x{args.latent_channels}", segment(latent, z, args.latent_steps)),
        Contender(f"pixel {args.image_size}x{args.image_size}x{args.pixel_channels}", segment(pixel, x, args.pixel_steps)),
    ], args.repeats)
    lat_name, pix_name = rates
    print()
    res = _results.start("latent_vs_pixel", args)
    print(res.table("rates", ["input", "clock", "images/s (median)", "segments min–max", "vs pixel (median per repeat)"],
                    ratio_rows(rates, pix_name)))
    res.ratios.update(median_ratios(rates, pix_name))
    ratio = [a / b for a, b in zip(rates[lat_name]["wall"], rates[pix_name]["wall"])]
    print(f"\nlatent/pixel wall-clock ratio per repeat: {', '.join(f'{r:.1f}' for r in ratio)}  (goal >= 10x)")
    res.save(args.json)

if __name__ == "__main__":
    main()

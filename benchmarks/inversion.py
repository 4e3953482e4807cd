"""DDIM inversion → reconstruction PSNR on held-out real images, for 10 / 25 / 50 / 100 steps:
with and without guidance, fixed-point refinement and null-condition optimisation.

    python benchmarks/inversion.py                                  # outputs/demo/model, 16 images
    python benchmarks/inversion.py --model M --images 8 --steps 10,25,50 --fixed-point 2 --guidance 3

Columns (one `LDMPipeline.invert` call each, the images' own classes as the condition):
    plain           invert and reconstruct at guidance 1
    +fixed-point    K fixed-point refinements per inversion step (Song et al. inversion made exact-er)
    guided          invert at 1, reconstruct at guidance G (what an edit under guidance starts from)
    guided +fp      the same with fixed-point inversion
    guided +null    null-condition inversion: per-step null embeddings fitted so the guided
                    reconstruction follows the scale-1 pivot (Mokady et al. 2022, class analogue)

Two PSNRs per cell: against the input image (what a user sees; bounded by the autoencoder, whose own
round trip is printed as the ceiling) and against the autoencoder's reconstruction (the diffusion
round trip alone). Images are the Fashion-MNIST test split, never seen in training.
"""
from __future__ import annotations

import argparse
import sys

import torch

import _results
from _common import parse_ints, set_threads
from _serving import DEFAULT_MODEL, Clock, held_out_images, load_model


def variants(k: int, g: float) -> list[tuple[str, dict]]:
    return [
        ("plain", dict(fixed_point_iters=0, guidance=1.0)),
        (f"+fixed-point ({k})", dict(fixed_point_iters=k, guidance=1.0)),
        (f"guided ({g:g})", dict(fixed_point_iters=0, guidance=g)),
        (f"guided ({g:g}) +fp ({k})", dict(fixed_point_iters=k, guidance=g)),
        (f"guided ({g:g}) +null", dict(fixed_point_iters=0, guidance=g, null_optimization=True)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--offset", type=int, default=0, help="first test-split image")
    ap.add_argument("--real-shards", default=None, help="held-out image shards (default: Fashion-MNIST test split)")
    ap.add_argument("--steps", default="10,25,50,100")
    ap.add_argument("--fixed-point", type=int, default=2)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--null-inner", type=int, default=10, help="Adam iterations per step for the null embedding")
    ap.add_argument("--null-max-steps", type=int, default=100, help="skip null optimisation above this many steps")
    ap.add_argument("--threads", type=int, default=1)
    _results.add_options(ap, quick="2 images, 10 steps, 2 null-optimisation iterations")
    a = ap.parse_args()
    if a.quick:
        a.images, a.steps, a.null_inner = 2, "10", 2
    set_threads(a.threads)

    from ldm_system.eval.metrics import psnr

    pipe = load_model(a.model)
    if pipe.net.cfg.conditioning != "class":
        raise SystemExit("this benchmark compares guided variants: it needs a class-conditional model")
    x, labels = held_out_images(pipe, a.images, offset=a.offset, shards=a.real_shards)
    with torch.no_grad():
        ae = pipe.codec.decode(pipe.codec.encode(x)).clamp(-1, 1)
    ceiling = float(psnr((ae + 1) / 2, (x + 1) / 2).mean())
    print(f"model {a.model}; {a.images} held-out images; autoencoder round trip alone: {ceiling:.2f} dB", flush=True)

    cols = variants(a.fixed_point, a.guidance)
    results = []
    for steps in parse_ints(a.steps):
        for name, kw in cols:
            if kw.get("null_optimization") and steps > a.null_max_steps:
                results.append({"steps": steps, "variant": name, "skipped": True})
                continue
            with Clock() as clk:
                r = pipe.invert(x, classes=labels, steps=steps, null_inner_steps=a.null_inner, **kw)
            vs_ae = float(psnr((r.reconstruction + 1) / 2, (ae + 1) / 2).mean())
            row = {"steps": steps, "variant": name, "psnr": sum(r.psnr) / len(r.psnr), "psnr_vs_ae": vs_ae,
                   "ssim": sum(r.ssim) / len(r.ssim), "latent_mse": sum(r.latent_mse) / len(r.latent_mse),
                   "wall_s_per_image": clk.wall / a.images, "cpu_s_per_image": clk.cpu / a.images}
            results.append(row)
            print(f"  {steps:>3} steps  {name:<22} PSNR {row['psnr']:6.2f} dB  vs AE {vs_ae:6.2f} dB  "
                  f"latent MSE {row['latent_mse']:.2e}  {row['wall_s_per_image']:.2f} s/img", flush=True)

    res = _results.start("inversion", a)
    res.ratio("autoencoder round trip PSNR (dB)", ceiling)

    def grid(key: str, field: str, fmt: str) -> str:
        rows = []
        for steps in parse_ints(a.steps):
            cells = {r["variant"]: r for r in results if r["steps"] == steps}
            rows.append([steps] + ["skipped" if cells[n].get("skipped") else format(cells[n][field], fmt) for n, _ in cols])
        return res.table(key, ["steps"] + [n for n, _ in cols], rows)

    print(f"\nReconstruction PSNR vs the input image (dB; autoencoder ceiling {ceiling:.2f} dB):\n")
    print(grid("psnr-input", "psnr", ".2f"))
    print("\nReconstruction PSNR vs the autoencoder's own reconstruction (dB; the diffusion round trip alone):\n")
    print(grid("psnr-autoencoder", "psnr_vs_ae", ".2f"))
    print("\nLatent MSE (unit-variance latents):\n")
    print(grid("latent-mse", "latent_mse", ".2e"))
    print("\nWall seconds per image (CPU, threads %d):\n" % a.threads)
    print(grid("seconds", "wall_s_per_image", ".2f"))
    res.save(a.json)


if __name__ == "__main__":
    sys.exit(main())

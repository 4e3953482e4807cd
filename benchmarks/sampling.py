"""DDPM-1000 vs DDIM-50 vs DPM-Solver++(2M)-20 on one trained model: wall time per image and an
FID-style distance to real held-out images, side by side in one run.

    python benchmarks/sampling.py                                  # outputs/demo/model, 200 images each
    python benchmarks/sampling.py --model M --num 100 --batch 50   # quicker, noisier
    python benchmarks/sampling.py --samplers ddpm:1000,ddim:50,ddim:20,dpm++2m:20,dpm++2m:10

Method
- Every sampler draws the same images: classes cycle through 0..K-1, and batch b of every sampler
  starts from the same x_T (seed + b). DDIM and DPM-Solver++ are deterministic ODE solvers from there;
  DDPM adds fresh noise every step.
- Batches are interleaved (round b: every sampler's batch b, order alternating), so a burst of load
  from other jobs on the shared cores hits every sampler alike. Speed-up (wall): the median over rounds
  of the per-round time ratio; speed-up (CPU): the ratio of process CPU seconds, which excludes the
  time other jobs hold the cores (the steadier number on a shared machine, with --threads 1).
- Distance: Fréchet distance between EfficientNet-Lite0 features of N generated images and a fixed
  reference set of real held-out images (Fashion-MNIST test split by default). This is NOT comparable
  to Inception FID numbers in papers, and with N of a few hundred it carries a large positive bias that
  depends on N, so compare rows of one run only. Two rows give the run's noise floor: N real held-out
  images (disjoint from the reference) and DDIM-50 from other seeds.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

import _results
from _common import set_threads
from _serving import DEFAULT_MODEL, Clock, features, held_out_images, load_model


def parse_samplers(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        name, _, steps = item.strip().rpartition(":")
        out.append((name, int(steps)))
    return out


def label(name: str, steps: int) -> str:
    return {"ddpm": "DDPM", "ddim": "DDIM", "dpm++2m": "DPM-Solver++(2M)"}.get(name, name) + f"-{steps}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--samplers", default="ddpm:1000,ddim:50,dpm++2m:20")
    ap.add_argument("--baseline", default="ddpm:1000", help="speed-up and distance ratios are relative to this")
    ap.add_argument("--num", type=int, default=200, help="images per sampler")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--reference", type=int, default=1000, help="real held-out images in the reference set")
    ap.add_argument("--real-shards", default=None, help="held-out image shards (default: Fashion-MNIST test split)")
    ap.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance (1: plain conditional)")
    ap.add_argument("--feature-size", type=int, default=96,
                    help="EfficientNet input side (images are upsampled; 224 is ~10x slower on a CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--grid", default=None, help="write the first 10 samples of every sampler, one row each")
    _results.add_options(ap, quick="DDIM-10 against DDPM-50, 4 images per sampler, 20 reference images")
    a = ap.parse_args()
    if a.quick:
        a.samplers, a.baseline, a.num, a.batch, a.reference = "ddpm:50,ddim:10", "ddpm:50", 4, 4, 20
    set_threads(a.threads)

    from ldm_system.eval.features import EFFNET_FD_LABEL, build_feature_extractor
    from ldm_system.eval.metrics import frechet_distance_from_features

    pipe = load_model(a.model)
    samplers = parse_samplers(a.samplers)
    base = tuple(parse_samplers(a.baseline)[0])
    if base not in samplers:
        raise SystemExit(f"--baseline {a.baseline} is not among --samplers")
    k = pipe.net.cfg.num_classes if pipe.net.cfg.conditioning == "class" else 0
    rounds = -(-a.num // a.batch)
    print(f"model {a.model}: {pipe.image_size}px, latents {tuple(pipe.latent_shape(1)[1:])}, {k} classes; "
          f"{a.num} images per sampler in {rounds} rounds of {a.batch}; guidance {a.guidance}", flush=True)

    contenders = [*samplers, ("ddim", 50, "other seeds")] if ("ddim", 50) in samplers else list(samplers)
    key = lambda c: c if len(c) == 2 else ("ddim-other", 50)  # noqa: E731
    images = {key(c): [] for c in contenders}
    wall = {key(c): [] for c in contenders}
    cpu = {key(c): [] for c in contenders}
    for r in range(rounds):
        n = min(a.batch, a.num - r * a.batch)
        classes = [(r * a.batch + i) % k for i in range(n)] if k else None
        order = contenders if r % 2 == 0 else contenders[::-1]
        for c in order:
            name, steps = c[0], c[1]
            seed = a.seed + r + (100_000 if len(c) == 3 else 0)
            with Clock() as clk:
                x = pipe.sample(n, classes=classes, sampler=name, steps=steps, guidance=a.guidance if k else 1.0,
                                seed=seed)
            images[key(c)].append(x)
            wall[key(c)].append(clk.wall)
            cpu[key(c)].append(clk.cpu)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{label(*c[:2])} {wall[key(c)][-1]:.1f}s" for c in order),
              flush=True)

    print(f"features ({EFFNET_FD_LABEL}, {a.feature_size}px) ...", flush=True)
    ext = build_feature_extractor("effnet-lite0", resize=a.feature_size)
    real, _ = held_out_images(pipe, a.reference + a.num, shards=a.real_shards)
    ref_f = features(ext, real[a.num:])
    floor = frechet_distance_from_features(ref_f, features(ext, real[:a.num]))
    fd = {c: frechet_distance_from_features(ref_f, features(ext, torch.cat(v))) for c, v in images.items()}

    res = _results.start("sampling", a)
    rows = []
    for c in samplers:
        name, steps = c
        speed = statistics.median(b / s for b, s in zip(wall[base], wall[c]))
        speed_cpu = sum(cpu[base]) / sum(cpu[c])
        per_img = sum(wall[c]) / a.num
        rows.append([label(name, steps), steps * (2 if a.guidance != 1 and k else 1), f"{per_img:.3f}",
                     f"{sum(cpu[c]) / a.num:.3f}", f"{speed:.1f}x", f"{speed_cpu:.1f}x", f"{fd[c]:.2f}",
                     f"{100 * (fd[c] / fd[base] - 1):+.1f}%"])
        res.ratios.update({f"{label(name, steps)} speed-up, wall": speed, f"{label(name, steps)} speed-up, cpu": speed_cpu,
                           f"{label(name, steps)} FD": fd[c]})
    if ("ddim-other", 50) in fd:
        rows.append(["DDIM-50, other seeds (noise)", "", "", "", "", "", f"{fd[('ddim-other', 50)]:.2f}",
                     f"{100 * (fd[('ddim-other', 50)] / fd[base] - 1):+.1f}%"])
    rows.append([f"{a.num} real held-out images (floor)", "", "", "", "", "", f"{floor:.2f}", ""])
    print()
    print(res.table("samplers", ["sampler", "UNet evals/img", "wall s/img", "CPU s/img", "speed-up (wall)",
                                 "speed-up (CPU)", "FD (EffNet-Lite0)", f"FD vs {label(*base)}"], rows))
    print(f"\nFD: {EFFNET_FD_LABEL}; {a.num} generated vs {a.reference} real held-out images, features at "
          f"{a.feature_size}px. Speed-up vs {label(*base)}: wall = median over {rounds} interleaved rounds of the per-round "
          f"ratio; CPU = ratio of this process's CPU seconds (steadier when other jobs share the cores). Threads: {a.threads}.")

    if a.grid:
        from ldm_system.images import save_grid

        save_grid(torch.cat([torch.cat(images[c])[:10] for c in samplers]), a.grid, nrow=10)
        print(f"grid: {a.grid} (rows: {', '.join(label(*c) for c in samplers)})")
    res.save(a.json)


if __name__ == "__main__":
    sys.exit(main())

"""Stage-1 ablation: KL-f4 on Fashion-MNIST 32x32, with and without the perceptual and adversarial losses.

Four variants train for the same number of steps at the same batch size (a fixed budget in images,
steps x batch; wall time is reported per variant but not used as the budget, because on a shared
machine a time budget would hand the variants different amounts of work):

    a_l1        L1 (+ KL 1e-6)
    b_perc      L1 + perceptual (EfficientNet-Lite0 LPIPS-style distance)
    c_adv       L1 + PatchGAN (hinge, adaptive weight), discriminator from --disc-frac of the steps
    d_full      L1 + perceptual + PatchGAN: the LDM recipe (configs/autoencoder/bench-kl-f4.yaml)

Each variant goes through the one engine (`run_autoencoder`), then is evaluated on the same held-out
test images (the first --eval-images of the test shards) with `eval_autoencoder`: PSNR, SSIM and the
Fréchet distance over EfficientNet-Lite0 features (rFID-style, NOT comparable to Inception rFID).
Sharpness is the ratio of the reconstructions' mean gradient magnitude to the inputs' (1 = as
sharp as the data, < 1 = blurrier); the high-frequency energy ratio (FFT power above half the
Nyquist radius) is reported next to it. A held-out PSNR curve over the run comes from the engine's
intermediate checkpoints (--curve-every).

    python benchmarks/autoencoder.py                          # 4 variants, defaults below
    python benchmarks/autoencoder.py --variants a --steps 300 --tag probe   # calibration run
    python benchmarks/autoencoder.py --reuse                  # re-evaluate / re-tabulate finished runs

Writes benchmarks/out/autoencoder/{results.json, recon_<variant>.png, comparison.png} and, with
--readme, a section of benchmarks/README.md. Training runs live under outputs/benchmarks/autoencoder/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

import _results
from _common import ROOT, set_threads
from autoencoders.factory import build_autoencoder
from autoencoders.io import load_autoencoder
from ldm_system.config import load_config
from ldm_system.data.stream import first_images
from ldm_system.eval.autoencoder import eval_autoencoder
from ldm_system.eval.features import EFFNET_FD_LABEL, build_feature_extractor
from ldm_system.images import make_grid
from ldm_system.train.runs import AERunConfig, run_autoencoder

OUT = ROOT / "benchmarks" / "out" / "autoencoder"
RUNS = ROOT / "outputs" / "benchmarks" / "autoencoder"
CONFIG = ROOT / "configs" / "autoencoder" / "bench-kl-f4.yaml"
NEVER = 10**9  # disc_start for variants without the adversarial term


@dataclass(frozen=True)
class Variant:
    key: str
    name: str
    label: str
    perceptual: bool
    adversarial: bool


VARIANTS = {
    "a": Variant("a", "a_l1", "L1", False, False),
    "b": Variant("b", "b_perc", "L1 + perceptual", True, False),
    "c": Variant("c", "c_adv", "L1 + adversarial", False, True),
    "d": Variant("d", "d_full", "L1 + perceptual + adversarial", True, True),
}


# ---- held-out data and measures -------------------------------------------------------------------
def held_out(shards: str, n: int) -> torch.Tensor:
    """The first n test images in shard order (no shuffling): (n, 1, 32, 32) in [-1, 1]."""
    return first_images(shards, n)


def batches(images: torch.Tensor, size: int = 25) -> list[torch.Tensor]:
    return list(images.split(size))


@torch.no_grad()
def reconstruct(ae: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([ae(x, sample_posterior=False)["recon"].clamp(-1, 1) for x in batches(images)])


def grad_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Mean |∂x/∂h| + |∂x/∂w| (forward differences) per image, on [0, 1] values: (B,)."""
    x = (x + 1) / 2
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    return dh + dw


def high_freq_energy(x: torch.Tensor) -> torch.Tensor:
    """FFT power at radii above half the Nyquist frequency, per image: (B,)."""
    x = (x + 1) / 2
    h, w = x.shape[-2:]
    power = torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)).abs().pow(2)
    fy, fx = torch.fft.fftfreq(h).abs().view(-1, 1), torch.fft.fftfreq(w).abs().view(1, -1)
    mask = (fy.pow(2) + fx.pow(2)).sqrt() > 0.25  # Nyquist = 0.5 cycles/pixel
    return (power * mask).sum(dim=(1, 2, 3))


def sharpness(recon: torch.Tensor, images: torch.Tensor) -> dict[str, float]:
    return {
        "grad_ratio": (grad_magnitude(recon).mean() / grad_magnitude(images).mean()).item(),
        "hf_ratio": (high_freq_energy(recon).mean() / high_freq_energy(images).mean()).item(),
    }


# ---- one variant ---------------------------------------------------------------------------------
def variant_config(args, v: Variant) -> AERunConfig:
    disc_start = int(round(args.disc_frac * args.steps)) if v.adversarial else NEVER
    overrides = [
        f"data.shards={args.train_shards}",
        f"data.batch_size={args.batch}",
        f"train.steps={args.steps}",
        f"train.out_dir={run_dir(args, v)}",
        f"train.checkpoint.every={args.curve_every}",
        f"train.checkpoint.keep_last={10**6}",
        f"loss.perceptual={'effnet-lite0' if v.perceptual else 'none'}",
        f"loss.disc_start={disc_start}",
        *args.set,
    ]
    return load_config(AERunConfig, args.config, overrides)


def run_dir(args, v: Variant) -> Path:
    return RUNS / (f"{args.tag}_{v.name}" if args.tag else v.name)


def train(cfg: AERunConfig) -> dict:
    out = Path(cfg.train.out_dir)
    if out.is_symlink() or out.is_file():
        raise SystemExit(f"{out} is a link or a file; refusing to delete it (use --reuse, or remove it yourself)")
    if out.exists():  # a fresh run, never a silent resume of an older one
        shutil.rmtree(out)
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    run_autoencoder(cfg)
    return {**timing_from_log(cfg), "wall_s": time.perf_counter() - t0, "load_before": load0,
            "load_after": os.getloadavg()[0]}


def timing_from_log(cfg: AERunConfig) -> dict:
    """Time of the training loop alone, from the engine's log windows (images / (images/s))."""
    train_s, prev, last = 0.0, 0, {}
    for line in (Path(cfg.train.out_dir) / "metrics.jsonl").read_text().splitlines():
        last = json.loads(line)
        train_s += (last["step"] - prev) * cfg.data.batch_size / last["images_per_s"]
        prev = last["step"]
    return {"wall_s": float("nan"), "train_s": train_s, "steps_done": prev, "steps_per_s": prev / train_s,
            "load_before": float("nan"), "load_after": float("nan"),
            "final_train_stats": {k: v for k, v in last.items() if k.startswith(("ae/", "disc/", "loss/"))}}


def psnr_curve(cfg: AERunConfig, images: torch.Tensor) -> list[list[float]]:
    """[step, held-out PSNR] at every intermediate checkpoint (weights/ae.safetensors)."""
    curve = []
    ae = build_autoencoder(cfg.model)
    for ck in sorted((Path(cfg.train.out_dir) / "checkpoints").glob("step_*")):
        if ck.suffix == ".tmp" or not (ck / "weights" / "ae.safetensors").exists():
            continue
        ae.load_state_dict(load_file(str(ck / "weights" / "ae.safetensors")))
        psnr = eval_autoencoder(ae, batches(images), use_features=False)["psnr"]
        curve.append([int(ck.name.split("_")[1]), round(psnr, 3)])
    return curve


def evaluate(args, v: Variant, cfg: AERunConfig, images: torch.Tensor, features) -> dict:
    ae, meta = load_autoencoder(Path(cfg.train.out_dir) / "autoencoder")
    t0 = time.perf_counter()
    metrics = eval_autoencoder(ae, batches(images), features=features)
    recon = reconstruct(ae, images)
    result = {**metrics, **sharpness(recon, images), "eval_s": time.perf_counter() - t0,
              "latent_scale": meta.latent_scale}
    result["psnr_curve"] = psnr_curve(cfg, images[: args.curve_images])
    save_recon_grid(images[: args.grid_images], recon[: args.grid_images], OUT / f"{prefix(args)}recon_{v.name}.png")
    torch.save(recon[: args.grid_images].clone(), run_dir(args, v) / "grid_recon.pt")
    return result


# ---- grids ---------------------------------------------------------------------------------------
def upscale(im: Image.Image, k: int = 3) -> Image.Image:
    return im.resize((im.width * k, im.height * k), Image.NEAREST)


def save_recon_grid(images: torch.Tensor, recon: torch.Tensor, path: Path, per_row: int = 8) -> None:
    """Rows of 8: an input row, then its reconstruction row, and so on."""
    rows = []
    for i in range(0, images.shape[0], per_row):
        rows += [images[i : i + per_row], recon[i : i + per_row]]
    path.parent.mkdir(parents=True, exist_ok=True)
    upscale(make_grid(torch.cat(rows), nrow=per_row)).save(path)


def save_comparison(images: torch.Tensor, recons: dict[str, torch.Tensor], path: Path, per_row: int = 16) -> None:
    """Blocks of 16 columns: the input row, then one row per variant (labelled on the left)."""
    rows, labels = [], []
    for i in range(0, images.shape[0], per_row):
        rows.append(images[i : i + per_row])
        labels.append("input")
        for name, recon in recons.items():
            rows.append(recon[i : i + per_row])
            labels.append(name)
    grid = upscale(make_grid(torch.cat(rows), nrow=per_row)).convert("RGB")
    margin = 80
    canvas = Image.new("RGB", (grid.width + margin, grid.height), "white")
    canvas.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    row_h = grid.height / len(rows)
    for r, label in enumerate(labels):
        draw.text((4, int(r * row_h + row_h / 2) - 5), label, fill="black")
    canvas.save(path)


# ---- report --------------------------------------------------------------------------------------
def prefix(args) -> str:
    return f"{args.tag}_" if args.tag else ""


def summary_rows(args, results: dict) -> list[list[object]]:
    rows = []
    for name, r in results.items():
        rows.append([name, r["label"], r["steps_done"], args.batch, f"{r['train_s'] / 60:.1f}",
                     f"{r['steps_per_s']:.2f}", f"{r['psnr']:.2f}", f"{r['ssim']:.4f}",
                     f"{r.get('fd_effnet_lite0', float('nan')):.2f}", f"{r['grad_ratio']:.3f}", f"{r['hf_ratio']:.3f}"])
    return rows


HEADERS = ["variant", "losses", "steps", "batch", "train min", "steps/s", "PSNR dB", "SSIM",
           "FD-effnet*", "sharpness (grad)", "HF energy"]


# glibc returns freed blocks above its mmap threshold to the kernel at once, so every large activation
# (EfficientNet at 224 px: ~25 MB per tensor at batch 16) is a fresh mmap and a storm of page faults.
# Under CPU contention this made feature extraction 3-5x slower (sys time > user time). Keeping
# blocks up to 32 MB (glibc's maximum) on the heap and not trimming it removes that.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296",
              "MALLOC_TOP_PAD_": "268435456"}


def reexec_with_malloc_env() -> None:
    """glibc reads these only at process start: re-run this script once with them set."""
    if any(k not in os.environ for k in MALLOC_ENV):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})


def main() -> None:
    reexec_with_malloc_env()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--variants", default="a,b,c,d", help="comma-separated keys of VARIANTS")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--disc-frac", type=float, default=0.6, help="adversarial variants: disc_start = frac * steps")
    ap.add_argument("--train-shards", default=str(ROOT / "outputs/data/fmnist/train"))
    ap.add_argument("--test-shards", default=str(ROOT / "outputs/data/fmnist/test"))
    ap.add_argument("--eval-images", type=int, default=2000)
    ap.add_argument("--curve-every", type=int, default=0, help="checkpoint interval for the PSNR curve (0 = steps/5)")
    ap.add_argument("--curve-images", type=int, default=500)
    ap.add_argument("--grid-images", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="", help="prefix of run folders and output files (e.g. probe)")
    ap.add_argument("--reuse", action="store_true", help="skip training where the run folder has an autoencoder")
    ap.add_argument("--set", action="append", default=[], help="extra config override, e.g. model.channels=[16,32,32]")
    _results.add_options(ap, quick="variants a and c, 40 steps of batch 8, 100 held-out images (tag 'quick')")
    args = ap.parse_args()
    if args.quick:
        args.variants, args.steps, args.batch, args.eval_images, args.curve_images = "a,c", 40, 8, 100, 100
        args.grid_images, args.tag = 8, args.tag or "quick"
    args.curve_every = args.curve_every or max(1, args.steps // 5)
    set_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)

    images = held_out(args.test_shards, args.eval_images)
    features = build_feature_extractor("effnet-lite0")
    results_path = OUT / f"{prefix(args)}results.json"
    previous = json.loads(results_path.read_text())["variants"] if results_path.exists() else {}
    results: dict[str, dict] = {}
    for key in args.variants.split(","):
        v = VARIANTS[key.strip()]
        cfg = variant_config(args, v)
        have = (run_dir(args, v) / "autoencoder" / "autoencoder.json").exists()
        if args.reuse and have:
            keys = ("wall_s", "train_s", "steps_done", "steps_per_s", "load_before", "load_after", "final_train_stats")
            timing = ({k: previous[v.name][k] for k in keys} if v.name in previous else timing_from_log(cfg))
            print(f"[{v.name}] reusing {run_dir(args, v)}", flush=True)
        else:
            print(f"[{v.name}] training {args.steps} steps x batch {args.batch}, load {os.getloadavg()[0]:.2f}",
                  flush=True)
            timing = train(cfg)
        r = {"label": v.label, "disc_start": cfg.loss.disc_start if v.adversarial else None, **timing,
             **evaluate(args, v, cfg, images, features)}
        results[v.name] = r
        print(f"[{v.name}] {r['train_s'] / 60:.2f} min ({r['steps_per_s']:.2f} steps/s), PSNR {r['psnr']:.2f} dB, "
              f"SSIM {r['ssim']:.4f}, FD {r['fd_effnet_lite0']:.2f}, grad ratio {r['grad_ratio']:.3f}, "
              f"curve {r['psnr_curve']}", flush=True)

    grid = images[: args.grid_images]
    recons = {n: torch.load(run_dir(args, VARIANTS[n[0]]) / "grid_recon.pt", weights_only=True) for n in results}
    save_comparison(grid, recons, OUT / f"{prefix(args)}comparison.png")
    base = load_config(AERunConfig, args.config, [f"train.steps={args.steps}", *args.set])
    report = {
        "benchmark": "KL-f4 on Fashion-MNIST 32x32: perceptual / adversarial ablation",
        "budget": {"steps": args.steps, "batch": args.batch, "images": args.steps * args.batch,
                   "disc_start": int(round(args.disc_frac * args.steps))},
        "model": {"channels": list(base.model.channels), "latent": [base.model.latent_channels, 8, 8],
                  "layers_per_block": base.model.layers_per_block},
        "optim": {"ae_lr": base.optim.ae_lr, "disc_lr": base.optim.disc_lr, "schedule": base.train.lr.schedule},
        "eval": {"images": images.shape[0], "shards": args.test_shards, "fd_label": EFFNET_FD_LABEL,
                 "sharpness": "grad_ratio = mean |grad| recon / input; hf_ratio = FFT power above Nyquist/2"},
        "machine": {"threads": args.threads, "cpus": os.cpu_count(), "torch": torch.__version__,
                    "platform": platform.platform()},
        "overrides": args.set,
        "variants": results,
    }
    results_path.write_text(json.dumps(report, indent=2) + "\n")
    res = _results.start("autoencoder", args)
    text = res.table("summary", HEADERS, summary_rows(args, results))
    steps = sorted({s for r in results.values() for s, _ in r["psnr_curve"]})
    res.table("psnr-curve", ["variant", *map(str, steps)],
              [[name, *[f"{dict(r['psnr_curve']).get(s, float('nan')):.1f}" for s in steps]] for name, r in results.items()])
    for name, r in results.items():
        res.ratios.update({f"{name} PSNR": r["psnr"], f"{name} grad ratio": r["grad_ratio"]})
    print("\n" + text)
    print(f"* {EFFNET_FD_LABEL}")
    print(f"results: {results_path}\ngrids: {OUT}/{prefix(args)}recon_*.png, {OUT}/{prefix(args)}comparison.png")
    res.save(args.json)


if __name__ == "__main__":
    main()

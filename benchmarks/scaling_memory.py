"""Scale on paper: per-GPU bytes of model states under DDP and ZeRO-1/2/3, and the loader's read rate.

    python benchmarks/scaling_memory.py                          # print the tables (~1 min on a loaded CPU)
    python benchmarks/scaling_memory.py --json benchmarks/results/scaling_memory.json
    python benchmarks/render_readme.py    # rewrite the tables of docs/scaling.md from that file

Nothing is allocated: the UNets are our own presets (`ldm_system.models.unet.PRESETS`, "ldm4" and
"sd1") built on the meta device, so parameter counts and forward FLOPs come from the real modules
without a byte of weights. Three tables:

1. Per-GPU bytes of weights, gradients, optimizer state (fp32 master + AdamW m, v) and EMA in bf16
   mixed precision at 8, 64 and 256 GPUs, from our accounting (`model_state_bytes`, below),
   with DeepSpeed's own estimator on the same parameter counts next to it.
2. Bytes per sample of our shard formats at 256 px: PNG image shards (what `ldm data pack` writes,
   measured on real photos through the packer's own `fit_image` + `encode_png`), JPEG for
   reference, and latent shards (what `ldm data encode` writes), each with its tar overhead.
3. The read rate per node (MB/s, 8 GPUs per node) the loader must sustain at a given images/s per
   GPU, with a FLOP-based estimate of that images/s (stated peak and utilisation; no GPU measured).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results  # noqa: E402

GPUS = (8, 64, 256)
GPUS_PER_NODE = 8
STAGES = ("ddp", "zero1", "zero2", "zero3")
MODELS = ("ldm4", "sd1")
GIB = 2**30
TAR_BLOCK = 512

# Per-GPU training rate assumptions for the read-rate table (not measured here: no GPU).
RATES = (100, 300, 1000)  # images/s per GPU
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM (NVIDIA's datasheet)
MFU = 0.35  # assumed fraction of that peak a UNet training step reaches


# ---- 1. model states -------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSize:
    name: str
    params: int  # Ψ, each parameter counted once
    largest_layer: int  # parameters of the largest single module (what ZeRO-3 gathers at once)
    fwd_flops: float = 0.0  # forward FLOPs per image at 256 px (0: not counted)
    latent: tuple[int, int, int] = (0, 0, 0)  # (C, H, W) of a 256-px image's latent


def count_params(model: nn.Module) -> tuple[int, int]:
    """(Ψ, largest layer). Parameters are deduplicated by identity: on the meta device every
    `data_ptr()` is 0, so DeepSpeed's own `model_to_params` (which deduplicates by data_ptr) would
    count a meta model as a single tensor."""
    total = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    return total, largest


def model_state_bytes(psi: float, gpus: int, stage: str, ema: bool = True) -> dict[str, float]:
    """Per-GPU bytes of model states with AdamW in bf16 mixed precision (Ψ parameters, N = gpus).

    ZeRO paper (Rajbhandari et al. 2020, §3.1): bf16 weights 2Ψ + bf16 grads 2Ψ + K·Ψ optimizer
    state with K = 12 (fp32 master 4Ψ, Adam m 4Ψ, v 4Ψ) = 16Ψ. ZeRO-1 partitions the 12Ψ, ZeRO-2
    also the grads, ZeRO-3 also the weights. On top of that, what our engine adds or does:
    - DDP: accelerate's bf16 is autocast, so the weights stay fp32 and are their own master:
      4Ψ + 4Ψ + 8Ψ (m, v) = the same 16Ψ, nothing partitioned.
    - EMA (`ldm_system.models.ema`): an fp32 shadow of each rank's *local view* of the weights,
      4Ψ under DDP/ZeRO-1/2 (the full weights), 4Ψ/N under ZeRO-3 (the shard).
    - "step_extra", outside the model states: DeepSpeed upcasts the bf16 gradient partition into
      an fp32 one at the optimizer step (4Ψ/N; DeepSpeed's estimator counts it, "4_grads_32bit").
      DDP: the reducer's buckets, a second fp32 gradient copy (4Ψ; accelerate leaves
      `gradient_as_bucket_view=False`). Both measured by benchmarks/zero_memory.py.
    """
    n = gpus
    if stage == "ddp":
        w, g, o, e, extra = 4 * psi, 4 * psi, 8 * psi, 4 * psi, 4 * psi
    elif stage in ("zero1", "zero2", "zero3"):
        w = 2 * psi / n if stage == "zero3" else 2 * psi
        g = 2 * psi if stage == "zero1" else 2 * psi / n
        o = 12 * psi / n
        e = 4 * psi / n if stage == "zero3" else 4 * psi
        extra = 4 * psi / n
    else:
        raise ValueError(f"unknown stage {stage!r}; known: {STAGES}")
    out = {"weights": w, "grads": g, "optim": o, "ema": e if ema else 0.0, "step_extra": extra}
    out["total"] = w + g + o + out["ema"]
    return out


def deepspeed_estimate(size: ModelSize, gpus: int, stage: str) -> float | None:
    """Bytes per GPU from DeepSpeed's own estimator, no offload (None: it has none for this stage).

    The documented entry points (`estimate_zero{2,3}_model_states_mem_needs_all_live/_all_cold`)
    print a table and return nothing; the numbers come from the functions they call, with the
    "offload none" options (`zero_init=True` for ZeRO-3). `printed_estimate` reads the printed
    table to check that both agree.
    """
    from deepspeed.runtime.zero import stage3, stage_1_and_2

    per_node, nodes = min(gpus, GPUS_PER_NODE), max(1, gpus // GPUS_PER_NODE)
    if stage == "zero2":
        return stage_1_and_2.estimate_zero2_model_states_mem_needs(
            size.params, num_gpus_per_node=per_node, num_nodes=nodes, cpu_offload=False)[1]
    if stage == "zero3":
        return stage3.estimate_zero3_model_states_mem_needs(
            size.params, size.largest_layer, num_gpus_per_node=per_node, num_nodes=nodes,
            cpu_offload=False, cpu_offload_params=False, zero_init=True)[1]
    return None


def printed_estimate(size: ModelSize, gpus: int, stage: str) -> float:
    """GB per GPU (2 decimals, as printed) of the "offload none" row of DeepSpeed's `_all_cold` table."""
    from deepspeed.runtime.zero import stage3, stage_1_and_2

    per_node, nodes = min(gpus, GPUS_PER_NODE), max(1, gpus // GPUS_PER_NODE)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        if stage == "zero2":
            stage_1_and_2.estimate_zero2_model_states_mem_needs_all_cold(size.params, per_node, nodes)
            row = "offload_optimizer=none"
        else:
            stage3.estimate_zero3_model_states_mem_needs_all_cold(size.params, size.largest_layer, per_node, nodes)
            row = "offload_param=none, offload_optimizer=none, zero_init=1"
    line = next(ln for ln in buf.getvalue().splitlines() if ln.rstrip().endswith(row))
    return float(re.findall(r"([\d.]+)GB", line)[1])


def gib(x: float) -> str:
    return f"{x / GIB:.2f}"


def breakdown_table(res: _results.Results, sizes: list[ModelSize], gpus: int = GPUS[0]) -> str:
    """What each mode keeps per GPU, by kind, at `gpus` GPUs."""
    rows = []
    for s in sizes:
        for stage in STAGES:
            b = model_state_bytes(s.params, gpus, stage)
            rows.append([s.name, stage, *[gib(b[k]) for k in ("weights", "grads", "optim", "ema", "total", "step_extra")]])
    return res.table("breakdown", ["model", "mode", "weights", "grads", "optim (master + m + v)", "EMA", "total",
                                   "+ buffers (not in total)"], rows)


def scaling_table(res: _results.Results, sizes: list[ModelSize], gpus: tuple[int, ...] = GPUS) -> str:
    """Per-GPU totals against the GPU count, ours next to DeepSpeed's estimator.

    "ours, DS terms" is what DeepSpeed's estimator claims to count: model states without our EMA,
    plus the fp32 gradient partition of the step."""
    rows = []
    for s in sizes:
        for stage in STAGES:
            row = [s.name, stage]
            for n in gpus:
                b = model_state_bytes(s.params, n, stage)
                ds = deepspeed_estimate(s, n, stage)
                row.append(gib(b["total"]))
                row += [gib(b["total"] - b["ema"] + b["step_extra"]), gib(ds)] if ds is not None else ["", ""]
            rows.append(row)
    heads = [h for n in gpus for h in (f"{n} GPUs: ours", "ours, DS terms", "DeepSpeed")]
    return res.table("per-gpu", ["model", "mode", *heads], rows)


# ---- 2. bytes per sample -----------------------------------------------------------------------
def tar_member(nbytes: int) -> int:
    """A ustar member: a 512-byte header plus the data padded to 512."""
    return TAR_BLOCK + -(-nbytes // TAR_BLOCK) * TAR_BLOCK


def npy_bytes(shape: tuple[int, ...]) -> int:
    """Size of one float32 .npy as `ldm data encode` writes it (header included)."""
    buf = io.BytesIO()
    np.save(buf, np.zeros(shape, np.float32), allow_pickle=False)
    return len(buf.getvalue())


def photo_sizes(side: int = 256) -> dict[str, float]:
    """Mean PNG (our packer's encoder) and JPEG q=90 bytes of `side`-px crops of scikit-image's
    photos, and the CPU milliseconds to decode one (median; process time, so other load on the
    machine inflates it less than wall time would)."""
    from PIL import Image
    from skimage import data as skdata

    from ldm_system.data.transforms import decode_image, encode_png, fit_image

    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "cat", "hubble_deep_field")
    enc: dict[str, list[bytes]] = {"png": [], "jpg": []}
    for name in names:
        fn = getattr(skdata, name, None)
        if fn is None:
            continue
        img = fit_image(Image.fromarray(fn()), 3, side)
        enc["png"].append(encode_png(img))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        enc["jpg"].append(buf.getvalue())
    out: dict[str, float] = {"count": len(enc["png"])}
    for kind, blobs in enc.items():
        out[kind] = float(np.mean([len(b) for b in blobs]))
        out[kind + "_ms"] = _median_cpu_ms(lambda: [decode_image(b) for b in blobs]) / len(blobs)
    latent = io.BytesIO()
    np.save(latent, np.zeros((3, side // 4, side // 4), np.float32), allow_pickle=False)
    out["npy_ms"] = _median_cpu_ms(lambda: np.load(io.BytesIO(latent.getvalue()), allow_pickle=False))
    return out


def _median_cpu_ms(fn, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return 1e3 * float(np.median(times))


def sample_formats(photos: dict[str, float], side: int = 256) -> list[tuple[str, int]]:
    """(format, bytes per sample in a shard), each with a `.cls` member; captions would add ~1 KiB."""
    cls = tar_member(4)
    f4, f8 = (3, side // 4, side // 4), (4, side // 8, side // 8)
    return [
        (f"PNG {side}² RGB (ldm data pack; mean of {photos['count']} photos)", tar_member(int(photos["png"])) + cls),
        (f"JPEG q90 {side}² (reference, not our format)", tar_member(int(photos["jpg"])) + cls),
        (f"KL f4 latent {f4}, latent+mean+logvar (ldm data encode)", 3 * tar_member(npy_bytes(f4)) + cls),
        (f"KL f4 latent {f4}, latent only", tar_member(npy_bytes(f4)) + cls),
        (f"KL f8 latent {f8}, latent+mean+logvar", 3 * tar_member(npy_bytes(f8)) + cls),
        (f"KL f8 latent {f8}, latent only (VQ shards)", tar_member(npy_bytes(f8)) + cls),
    ]


def read_rate_table(res: _results.Results, formats: list[tuple[str, int]], rates: tuple[int, ...] = RATES) -> str:
    """MB/s per node = bytes/sample × images/s per GPU × GPUs per node."""
    rows = [[name, f"{b / 1024:.1f}", *[f"{b * r * GPUS_PER_NODE / 1e6:,.0f}" for r in rates]] for name, b in formats]
    return res.table("read-rate", ["sample format", "KiB/sample", *[f"MB/s per node at {r} img/s/GPU" for r in rates]],
                     rows)


# ---- 3. throughput estimate --------------------------------------------------------------------
def forward_flops(model: nn.Module, latent: tuple[int, int, int], context: tuple[int, int] | None) -> float:
    """Forward FLOPs of one image, counted by torch's FlopCounterMode on meta tensors."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        x, t = torch.empty(1, *latent), torch.zeros(1, dtype=torch.long)
        if context is None:
            model(x, t)
        else:
            model(x, t, encoder_hidden_states=torch.empty(1, *context))
    return float(counter.get_total_flops())


def est_images_per_s(s: ModelSize) -> float:
    """Training images/s per GPU from FLOPs: training ≈ 3× forward (backward ≈ 2× forward)."""
    return MFU * H100_BF16_PEAK / (3 * s.fwd_flops)


def throughput_table(res: _results.Results, sizes: list[ModelSize], photos: dict[str, float]) -> str:
    """Per model at its estimated rate: MB/s per node from image shards and from its latent shards,
    and the CPU cores per node that decoding PNGs would take at the decode time measured here."""
    fmts = sample_formats(photos)
    png = fmts[0][1]
    latent_shard = {"ldm4": fmts[2][1], "sd1": fmts[4][1]}
    rows = []
    for s in sizes:
        ips = est_images_per_s(s)
        per_node = ips * GPUS_PER_NODE
        lat = latent_shard.get(s.name)
        rows.append([s.name, str(s.latent), f"{s.fwd_flops / 1e9:.0f}", f"{ips:,.0f}",
                     f"{png * per_node / 1e6:,.0f}", f"{lat * per_node / 1e6:,.0f}" if lat else "",
                     f"{per_node * photos.get('png_ms', 0) / 1e3:.1f}"])
    return res.table("throughput", ["model", "latent at 256 px", "forward GFLOP/image",
                                    f"est. img/s per H100 at {MFU:.0%} of bf16 peak", "MB/s per node, PNG shards",
                                    "MB/s per node, its latent shards (as encoded)", "CPU cores per node to decode the PNGs"],
                     rows)


# ---- the models and the report -----------------------------------------------------------------
# Latent of a 256-px image and the conditioning context for the FLOP count: LDM-4 (f = 4, one
# class token of width 512), SD-1.x (f = 8, 77 CLIP tokens of width 768).
LATENTS = {"ldm4": ((3, 64, 64), (1, 512)), "sd1": ((4, 32, 32), (77, 768))}


def meta_model(name: str) -> nn.Module:
    from ldm_system.models.unet import PRESETS, build_unet

    with torch.device("meta"):
        return build_unet(PRESETS[name])


def model_sizes(names: tuple[str, ...] = MODELS, flops: bool = True) -> list[ModelSize]:
    out = []
    for name in names:
        model = meta_model(name)
        total, largest = count_params(model)
        latent, ctx = LATENTS[name]
        out.append(ModelSize(name, total, largest, forward_flops(model, latent, ctx) if flops else 0.0, latent))
    return out


def report(sizes: list[ModelSize], photos: dict[str, float], res: _results.Results | None = None) -> str:
    """The tables as Markdown text; each is also recorded in `res` (the --json results)."""
    res = res if res is not None else _results.Results("scaling_memory", {})
    parts = ["Models, built on the meta device from `PRESETS`:", "",
             res.table("models", ["model", "parameters Ψ", "largest layer", "bf16 weights (2Ψ)"],
                   [[s.name, f"{s.params:,}", f"{s.largest_layer:,}", f"{gib(2 * s.params)} GiB"] for s in sizes]),
             "", f"Per-GPU GiB of model states at {GPUS[0]} GPUs, bf16 mixed precision, AdamW, fp32 EMA:", "",
             breakdown_table(res, sizes), "",
             "Per-GPU GiB against the number of GPUs (ours: the total above; DeepSpeed: its estimator, no offload):",
             "", scaling_table(res, sizes), "", "Bytes per training sample at 256 px:", "",
             read_rate_table(res, sample_formats(photos))]
    if any(s.fwd_flops for s in sizes):
        parts += ["", "Images/s per GPU estimated from FLOPs (not measured), and what the loader must then deliver:", "",
                  throughput_table(res, sizes, photos)]
    if "png_ms" in photos:
        for fmt in ("png", "jpg", "npy"):
            res.ratio(f"decode CPU ms per 256-px sample, {fmt}", photos[f"{fmt}_ms"])
        parts += ["", f"Decode cost measured here (CPU ms per 256-px sample, median): PNG {photos['png_ms']:.2f}, "
                      f"JPEG q90 {photos['jpg_ms']:.2f}, KL-f4 latent .npy {photos['npy_ms']:.3f}."]
    return "\n".join(parts) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-flops", action="store_true", help="skip the FLOP count (faster)")
    _results.add_options(ap, quick="no FLOP count (--no-flops)")
    args = ap.parse_args()
    args.no_flops = args.no_flops or args.quick
    res = _results.start("scaling_memory", args)
    text = report(model_sizes(flops=not args.no_flops), photo_sizes(), res)
    print(text)
    res.save(args.json)


if __name__ == "__main__":
    main()

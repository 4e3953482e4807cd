"""Attention benchmark: Triton flash attention vs torch SDPA.

GPU mode (a CUDA device is present): forward and backward TFLOP/s of both backends on the attention
shapes of a 256 px latent-diffusion UNet (self-attention over N = 1024 or 4096 latent tokens, head
dims 64, 40, 80, and cross-attention to 77 text tokens). FLOPs: 4 * B * H * Nq * Nk * D for the
forward (two matmuls of 2 * Nq * Nk * D each), 2.5x that for the backward (five matmuls).

CPU mode (no CUDA; runs the kernels in the Triton interpreter): max absolute errors of out, lse,
dQ, dK, dV over a shape grid, for fp32, fp16 and bf16 inputs, against an fp32 eager reference from
the same inputs. SDPA run in the same dtype is measured against the same reference, for context.

    python benchmarks/attention.py             # picks the mode from torch.cuda.is_available()
    python benchmarks/attention.py --mode cpu --full

Needs only torch and triton (and this checkout): nothing here imports diffusers, DeepSpeed or
ldm_system, so it runs on a bare GPU machine.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import _results  # noqa: E402  (benchmarks/ is on the path when the script runs)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Case:
    batch: int
    heads: int
    n_q: int
    n_k: int
    head_dim: int
    causal: bool = False

    @property
    def label(self) -> str:
        causal = " causal" if self.causal else ""
        return f"B{self.batch} H{self.heads} Nq{self.n_q} Nk{self.n_k} D{self.head_dim}{causal}"

    def forward_flops(self) -> float:
        flops = 4.0 * self.batch * self.heads * self.n_q * self.n_k * self.head_dim
        return flops / 2 if self.causal else flops


def make_inputs(case: Case, dtype: torch.dtype, device: str, seed: int = 0):
    gen = torch.Generator(device=device).manual_seed(seed)
    shapes = [(case.n_q,), (case.n_k,), (case.n_k,), (case.n_q,)]
    return [
        torch.randn(case.batch, case.heads, n[0], case.head_dim, generator=gen, device=device).to(dtype)
        for n in shapes
    ]  # q, k, v, grad_out


# ----------------------------------------------------------------------------------------- GPU


def gpu_cases(quick: bool = False) -> list[Case]:
    # 256 px images -> 32x32 latents (f = 8, N = 1024) or 64x64 latents (f = 4, N = 4096).
    cases = []
    for n, d in itertools.product((1024,) if quick else (1024, 4096), (64,) if quick else (64, 40, 80)):
        batch = 8 if n == 1024 else 2
        cases.append(Case(batch, 8, n, n, d))
        cases.append(Case(batch, 8, n, 77, d))  # cross-attention to 77 text tokens
    return cases


def run_gpu(dtypes: list[str], res: _results.Results, quick: bool = False) -> None:
    import triton.testing

    import kernels.autograd_fn as fa
    import torch.nn.functional as F

    def triton_fn(q, k, v, case):
        return fa.flash_attention(q, k, v, case.causal, case.head_dim**-0.5)

    def sdpa_fn(q, k, v, case):
        return F.scaled_dot_product_attention(q, k, v, is_causal=case.causal)

    columns = ("fwd triton", "fwd sdpa", "bwd triton", "bwd sdpa", "out err")
    header = f"{'shape':<34}{'dtype':>6}" + "".join(f"{c:>12}" for c in columns)
    print(f"GPU: {torch.cuda.get_device_name()}  (TFLOP/s; backward = (fwd+bwd time) - fwd time;")
    print("     out err = max |triton - sdpa| of the forward output)")
    print(header)
    print("-" * len(header))
    rows = []
    for dtype_name, case in itertools.product(dtypes, gpu_cases(quick)):
        q, k, v, grad_out = make_inputs(case, DTYPES[dtype_name], "cuda")
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        tflops = {}
        for name, fn in (("triton", triton_fn), ("sdpa", sdpa_fn)):
            fwd_ms = triton.testing.do_bench(lambda: fn(q, k, v, case))
            both_ms = triton.testing.do_bench(lambda: torch.autograd.grad(fn(q, k, v, case), (q, k, v), grad_out))
            bwd_ms = max(both_ms - fwd_ms, 1e-6)
            tflops[f"fwd {name}"] = case.forward_flops() / (fwd_ms * 1e-3) / 1e12
            tflops[f"bwd {name}"] = 2.5 * case.forward_flops() / (bwd_ms * 1e-3) / 1e12
        with torch.no_grad():
            out_err = (triton_fn(q, k, v, case).float() - sdpa_fn(q, k, v, case).float()).abs().max().item()
        cells = [f"{tflops[c]:>12.1f}" for c in columns[:4]] + [f"{out_err:>12.1e}"]
        print(f"{case.label:<34}{dtype_name:>6}" + "".join(cells))
        rows.append([case.label, dtype_name, *[f"{tflops[c]:.1f}" for c in columns[:4]], f"{out_err:.1e}"])
        res.ratio(f"{case.label} {dtype_name}: fwd triton / sdpa", tflops["fwd triton"] / tflops["fwd sdpa"])
        res.ratio(f"{case.label} {dtype_name}: bwd triton / sdpa", tflops["bwd triton"] / tflops["bwd sdpa"])
    res.table("gpu-tflops", ["shape", "dtype", *columns], rows)


# ----------------------------------------------------------------------------------------- CPU


def cpu_cases(full: bool, quick: bool = False) -> list[Case]:
    if quick:  # one ragged self-attention, one cross-attention, one causal
        return [Case(1, 2, 17, 17, 40), Case(1, 2, 17, 77, 80), Case(1, 1, 64, 64, 32, True)]
    lengths = (1, 17, 64, 100, 256)
    head_dims = (32, 40, 64, 80) if full else (40, 80)
    cases = []
    for n, kind, d, causal in itertools.product(lengths, ("self", "cross77"), head_dims, (False, True)):
        cases.append(Case(1, 2, n, n if kind == "self" else 77, d, causal))
    if not full:  # keep the power-of-two head dims in the default grid too, on the largest shape
        cases += [Case(1, 2, 256, 256, 32, True), Case(1, 2, 256, 256, 64, False)]
    return cases


def _errors(case: Case, dtype: torch.dtype):
    from kernels.autograd_fn import flash_attention_with_lse
    from kernels.reference import reference_attention_with_lse

    import torch.nn.functional as F

    q, k, v, grad_out = make_inputs(case, dtype, "cpu")
    scale = case.head_dim**-0.5

    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = flash_attention_with_lse(*leaves, case.causal, scale)
    grads = torch.autograd.grad(out, leaves, grad_out)

    ref_leaves = [t.float().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = reference_attention_with_lse(*ref_leaves, case.causal, scale)
    ref_grads = torch.autograd.grad(ref_out, ref_leaves, grad_out.float())

    sdpa_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    sdpa_out = F.scaled_dot_product_attention(*sdpa_leaves, is_causal=case.causal, scale=scale)
    sdpa_grads = torch.autograd.grad(sdpa_out, sdpa_leaves, grad_out)

    def err(a, b):
        return (a.detach().double() - b.detach().double()).abs().max().item()

    ours = [err(out, ref_out), err(lse, ref_lse)] + [err(g, r) for g, r in zip(grads, ref_grads)]
    sdpa = [err(sdpa_out, ref_out), float("nan")] + [err(g, r) for g, r in zip(sdpa_grads, ref_grads)]
    return ours, sdpa


def run_cpu(dtypes: list[str], full: bool, verbose: bool, res: _results.Results, quick: bool = False) -> None:
    cases = cpu_cases(full, quick)
    cols = ("out", "lse", "dq", "dk", "dv")
    print(f"CPU (Triton interpreter): {len(cases)} shapes x {len(dtypes)} dtypes; "
          "max abs error vs fp32 eager reference from the same inputs")
    summary = {}
    start = time.time()
    for dtype_name in dtypes:
        worst_ours = [0.0] * 5
        worst_sdpa = [0.0] * 5
        for case in cases:
            ours, sdpa = _errors(case, DTYPES[dtype_name])
            worst_ours = [max(a, b) for a, b in zip(worst_ours, ours)]
            worst_sdpa = [max(a, b) if b == b else a for a, b in zip(worst_sdpa, sdpa)]
            if verbose:
                print(f"  {dtype_name} {case.label:<34}" + "".join(f"{e:>10.2e}" for e in ours))
        summary[dtype_name] = (worst_ours, worst_sdpa)

    header = f"{'dtype':<6}{'backend':<9}" + "".join(f"{c:>10}" for c in cols)
    print(header)
    print("-" * len(header))
    rows = []
    for dtype_name, (ours, sdpa) in summary.items():
        print(f"{dtype_name:<6}{'triton':<9}" + "".join(f"{e:>10.2e}" for e in ours))
        print(f"{'':<6}{'sdpa':<9}" + "".join("       n/a" if i == 1 else f"{e:>10.2e}" for i, e in enumerate(sdpa)))
        rows.append([dtype_name, "triton", *[f"{e:.2e}" for e in ours]])
        rows.append(["", "sdpa", *["n/a" if i == 1 else f"{e:.2e}" for i, e in enumerate(sdpa)]])
        res.ratio(f"{dtype_name}: worst out error, triton / sdpa", ours[0] / sdpa[0] if sdpa[0] else float("inf"))
    res.table("cpu-errors", ["dtype", "backend", *cols], rows)
    print(f"({time.time() - start:.0f} s)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("auto", "gpu", "cpu"), default="auto")
    parser.add_argument("--dtypes", default="fp32,fp16,bf16", help="comma-separated subset of fp32,fp16,bf16")
    parser.add_argument("--full", action="store_true", help="CPU: every head dim in {32, 40, 64, 80}")
    parser.add_argument("--verbose", action="store_true", help="CPU: print every shape's errors")
    _results.add_options(parser, quick="CPU: 3 shapes; GPU: N = 1024, D = 64 only")
    args = parser.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        parser.error(f"unknown dtypes {unknown}; choose from {list(DTYPES)}")

    mode = args.mode
    if mode == "auto":
        mode = "gpu" if torch.cuda.is_available() else "cpu"
    if mode == "gpu":
        if not torch.cuda.is_available():
            parser.error("--mode gpu needs a CUDA device")
        res = _results.start("attention", args, source="python benchmarks/attention.py --mode gpu")
        run_gpu(dtypes, res, args.quick)
    else:
        # The interpreter must be chosen before triton decorates the kernels (first kernels import).
        if os.environ.get("TRITON_INTERPRET", "0") != "1":
            if "triton" in sys.modules:
                parser.error("set TRITON_INTERPRET=1 before triton is imported")
            os.environ["TRITON_INTERPRET"] = "1"
        torch.set_num_threads(1)
        res = _results.start("attention", args, source="TRITON_INTERPRET=1 python benchmarks/attention.py --mode cpu")
        run_cpu(dtypes, args.full, args.verbose, res, args.quick)
    res.save(args.json)


if __name__ == "__main__":
    main()

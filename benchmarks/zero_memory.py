"""Per-rank bytes of parameters, gradients and optimizer state under DDP, ZeRO-1, ZeRO-2 and ZeRO-3
on 2 ranks, counted from the tensors each rank actually holds during a real `Trainer` step.

    python benchmarks/zero_memory.py                 # 5 modes x fp32/bf16: 10 launches of 2 processes, ~6 min
    python benchmarks/zero_memory.py --quick         # DDP and the two ZeRO-3 variants
    python benchmarks/zero_memory.py --precisions bf16   # only the mixed-precision setting used on GPUs
    python benchmarks/zero_memory.py --widths 128,256,512 --attention 0,1,1

Each mode is one `accelerate launch` of this file in `--worker` mode (DDP over gloo; DeepSpeed with
the project's launch/deepspeed/zeroN.json; "zero3-tuned" = zero3.json with the buckets sized for
this model, see ZERO3_TUNING), running the real engine (`Trainer.train_step` with `DiffusionTask`,
the task's AdamW passed to DeepSpeed from the client side) on 8x8x3 random latents, batch 2, once
in fp32 and once with `--mixed_precision bf16` given to the launcher (what GPU runs use: DDP keeps
fp32 weights under autocast; DeepSpeed keeps bf16 weights/gradients and an fp32 master copy). The
engine takes the precision from the launcher; a run that used another one is an error.
Memory does not depend on timing, so the modes run one after the other.

When: on the third training step, at three moments:
- at AdamW's step (a step pre-hook on the task's own torch optimizer, which DDP and DeepSpeed both
  call): gradients are present and the Adam moments exist. ZeRO-3 calls it once per sub-group;
  the fullest of those calls is kept. The headline table;
- at the end of the UNet's forward (a forward hook): which parameters are gathered in flight;
- between steps (after zero_grad): what stays allocated for the whole run.

What is counted (each storage once, by data pointer, whole storage size; a view into a flat buffer
counts the whole buffer once):
- params:  the module's parameters; under ZeRO-3 `p.ds_tensor` (this rank's shard) plus any
           parameter materialised in full at that moment (gathered, or "persistent": below
           `stage3_param_persistence_threshold`, 1e5 elements by default, kept on every rank);
- master:  fp32 tensors AdamW updates that are not the module's parameters: DeepSpeed's master
           shard (`single_partition_of_fp32_groups`, `fp32_partitioned_groups_flat`), a clone even
           in fp32 training;
- grads:   `.grad` of the module's parameters and of what AdamW updates, and the ZeRO optimizer's
           gradient stores (`averaged_gradients`, `grads_in_partition`, `grad_partitions_flat_buffer`);
- optim:   AdamW state tensors (exp_avg, exp_avg_sq, step);
- other:   not in the ratio, listed for honesty. DDP: the reducer's gradient buckets (a second full
           gradient copy: accelerate leaves `gradient_as_bucket_view=False`), sizes from DDP's own
           logging data. DeepSpeed: every other tensor reachable from its ZeRO optimizer (reduce
           buckets etc.), at their allocated size: CPU pages never written are not resident.
Process RSS (everything, libraries included) is printed as a cross-check.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

import _results
from _common import ROOT, accelerate_launch, mib, parse_bools, parse_ints, unet_config

MASTER_STORES = ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat")  # DeepSpeed ZeRO-1/2, ZeRO-3
GRAD_STORES = ("averaged_gradients", "grads_in_partition", "grad_partitions_flat_buffer",
               "_DeepSpeedZeroOptimizer_Stage3__param_id_to_grad_partition")


CATS = ("params", "master", "grads", "optim")  # what the ratio counts


def step_total(snap: dict, phase: str | None = None) -> int:
    """params + master + grads + optimizer state (bytes) of a snapshot, or of a rank's `phase` one."""
    b = (snap[phase] if phase else snap)["bytes"]
    return sum(b.get(c, 0) for c in CATS)


class Ledger:
    """Bytes per category; a storage is counted once, under the first category that meets it."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.bytes: dict[str, int] = defaultdict(int)
        self.where: dict[str, int] = defaultdict(int)  # "category: source" -> bytes

    def add(self, category: str, t: object, where: str) -> None:
        if not isinstance(t, torch.Tensor):
            return
        s = t.untyped_storage()
        if s.nbytes() == 0 or s.data_ptr() in self.seen:  # ZeRO-3 releases gathered params to empty
            return
        self.seen.add(s.data_ptr())
        self.bytes[category] += s.nbytes()
        self.where[f"{category}: {where}"] += s.nbytes()

    def add_all(self, category: str, obj: object, where: str = "", depth: int = 4, _visited=None) -> None:
        """Every tensor inside lists / tuples / dicts / DeepSpeed objects, down to `depth` levels."""
        visited = _visited if _visited is not None else set()
        if depth < 0 or id(obj) in visited:
            return
        visited.add(id(obj))
        if isinstance(obj, torch.Tensor):
            self.add(category, obj, where)
            self.add(category, obj.grad, where + ".grad")
        elif isinstance(obj, dict):
            for v in obj.values():
                self.add_all(category, v, where, depth - 1, visited)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                self.add_all(category, v, where, depth - 1, visited)
        elif type(obj).__module__.startswith("deepspeed") and hasattr(obj, "__dict__"):
            for k, v in vars(obj).items():
                self.add_all(category, v, where or k.replace("_DeepSpeedZeroOptimizer_Stage3_", ""), depth - 1, visited)


def rss_mib() -> dict[str, float]:
    """Resident set size now and its peak so far (everything in the process: libraries too)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def snapshot(trainer, adamw: torch.optim.Optimizer) -> dict:
    ledger = Ledger()
    module, raw = trainer.p.modules["unet"], trainer.raw["unet"]
    for p in raw.parameters():
        ledger.add("params", getattr(p, "ds_tensor", None), "ZeRO-3 shards (p.ds_tensor)")
        ledger.add("params", p, "full parameters" if hasattr(p, "ds_tensor") else "module parameters")
    zero_opt = getattr(module, "optimizer", None)  # the DeepSpeed engine's ZeRO optimizer
    for g in adamw.param_groups:
        for p in g["params"]:
            ledger.add("master", p, "fp32 copies AdamW updates")
    for name in MASTER_STORES:  # ZeRO-3 empties AdamW's param_groups outside its step
        for p in getattr(zero_opt, name, None) or []:
            ledger.add("master", p, name)
    for p in raw.parameters():
        ledger.add("grads", p.grad, "p.grad")
    for g in adamw.param_groups:
        for p in g["params"]:
            ledger.add("grads", p.grad, ".grad of what AdamW updates")
    for name in GRAD_STORES:
        ledger.add_all("grads", getattr(zero_opt, name, None), name.replace("_DeepSpeedZeroOptimizer_Stage3_", ""))
    for state in adamw.state.values():
        for v in state.values():
            ledger.add("optim", v, "AdamW state")
    if zero_opt is not None:
        ledger.add_all("other", zero_opt)
    elif hasattr(module, "_get_ddp_logging_data"):
        # The reducer's buckets are C++-owned; DDP reports their sizes (bytes) in its logging data.
        buckets = str(module._get_ddp_logging_data().get("bucket_sizes", ""))
        ledger.bytes["other"] += sum(int(b) for b in buckets.split(",") if b.strip())
        ledger.where["other: DDP reducer buckets"] = ledger.bytes["other"]
    return {"bytes": dict(ledger.bytes), "where": dict(ledger.where), "rss": rss_mib(),
            "numel": sum(p.numel() if p.numel() else getattr(p, "ds_numel", 0) for p in raw.parameters())}


# launch/deepspeed/zero3.json bounds DeepSpeed's billion-parameter defaults for our UNet sizes
# (reduce bucket 5e7 elements, 1e8 live parameters); "zero3-tuned" sizes them for this ~10M-param
# UNet instead: parameters gathered in flight, the reduce bucket, what stays unpartitioned, and
# `sub_group_size`. The ZeRO-3 optimizer steps its partition one sub-group at a time and builds an
# fp32 copy of that sub-group's gradient just for its step (stage3.py,
# `_prepare_fp32_grad_for_sub_group`, freed in `_release_sub_group`). With DeepSpeed's default
# (1e9 elements) the whole partition is one sub-group, so that copy is 4Ψ/N bytes; with 1e6 it is
# at most ~4 MiB.
ZERO3_TUNING = {
    "reduce_bucket_size": 5_000_000,
    "stage3_prefetch_bucket_size": 1_000_000,
    "stage3_max_live_parameters": 1_000_000,
    "stage3_max_reuse_distance": 0,
    "stage3_param_persistence_threshold": 10_000,
    "sub_group_size": 1_000_000,
}


def tuned_zero3_config() -> dict:
    cfg = json.loads((ROOT / "launch" / "deepspeed" / "zero3.json").read_text())
    cfg["zero_optimization"].update(ZERO3_TUNING)
    return cfg


def worker(args) -> None:
    from ldm_system.train.diffusion_task import DiffusionTask
    from ldm_system.train.engine import Trainer
    from ldm_system.train.engine_config import EngineConfig, LogConfig
    from _common import diffusion_task

    class Task(DiffusionTask):
        """Keeps a handle on the torch AdamW it creates (DeepSpeed wraps it; its step still runs)."""

        def optimizers(self, modules):
            self.adamw = super().optimizers(modules)["unet"]
            return {"unet": self.adamw}

    unet = unet_config(8, 3, parse_ints(args.widths), parse_bools(args.attention), args.layers)
    base = diffusion_task(unet)
    task = Task(base.unet_cfg, base.diff_cfg, base.optim_cfg, base.codec, "latent")
    # Mixed precision comes from the launcher (`--mixed_precision`); main() checks what the run used.
    cfg = EngineConfig(out_dir=args.out_dir, steps=10, log=LogConfig(every=1000, progress=False))
    trainer = Trainer(task, [], cfg, micro_batch=2)
    result: dict = {}
    armed = {"forward": False, "step": False}

    def take(phase):
        if armed[phase]:
            snap = snapshot(trainer, task.adamw)
            # ZeRO-3 steps AdamW once per sub-group (`sub_group_size`), each with its own transient
            # fp32 gradient: keep the fullest moment of the step. Forward: its first call only.
            if phase == "forward":
                armed[phase] = False
            if phase not in result or step_total(snap) > step_total(result[phase]):
                result[phase] = snap
            result[phase + "_calls"] = result.get(phase + "_calls", 0) + 1

    task.adamw.register_step_pre_hook(lambda *_: take("step"))
    trainer.raw["unet"].register_forward_hook(lambda *_: take("forward"))  # gathered params in flight
    z = torch.randn(2, 3, 8, 8)
    for step in range(3):
        armed["forward"] = armed["step"] = step == 2
        trainer.train_step((z,))
    armed["step"] = False
    result["between"] = snapshot(trainer, task.adamw)  # after zero_grad: what stays for the whole run
    rank = trainer.accelerator.process_index
    result.update(rank=rank, world=trainer.accelerator.num_processes, precision=trainer.accelerator.mixed_precision)
    Path(args.out_dir, f"mem_rank{rank}.json").write_text(json.dumps(result))
    trainer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="ddp,zero1,zero2,zero3,zero3-tuned")
    ap.add_argument("--widths", default="64,128,256", help="UNet block_out_channels (default: 10.9M params)")
    ap.add_argument("--attention", default="0,0,1")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--precisions", default="no,bf16", help="launcher --mixed_precision values to measure")
    _results.add_options(ap, quick="only DDP and the two ZeRO-3 variants")
    ap.add_argument("--save", default="", help="write the raw per-rank snapshots to this JSON file")
    ap.add_argument("--load", default="", help="print the tables of a --save file instead of launching")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.modes = "ddp,zero3,zero3-tuned"

    if args.load:  # re-render a saved run without launching anything
        saved = json.loads(Path(args.load).read_text())
        args.widths, args.attention, args.layers = saved["widths"], saved["attention"], saved["layers"]
        runs = saved["runs"]
    else:
        runs = {}
        for precision in args.precisions.split(","):
            label = "fp32" if precision == "no" else precision
            runs[label] = {}
            for mode in args.modes.split(","):
                runs[label][mode] = launch_mode(mode, precision, args)
                print(f"{mode} {label}: done", file=sys.stderr)
                if args.save:  # after every launch, so a failure later keeps what was measured
                    Path(args.save).write_text(json.dumps({"widths": args.widths, "attention": args.attention,
                                                           "layers": args.layers, "runs": runs}))
    res = _results.start("zero_memory", args)
    for label, results in runs.items():
        report(results, args, label, res)
    if len(runs) > 1:
        summary(runs, res)
    res.save(args.json)


def launch_mode(mode: str, precision: str, args) -> list[dict]:
    """One `accelerate launch` of 2 workers; their per-rank snapshots."""
    with tempfile.TemporaryDirectory() as tmp:
        ds_json = None
        if mode == "zero3-tuned":
            ds_json = Path(tmp, "zero3-tuned.json")
            ds_json.write_text(json.dumps(tuned_zero3_config(), indent=2))
        accelerate_launch(Path(__file__), ["--worker", "--out-dir", tmp, "--widths", args.widths,
                                           "--attention", args.attention, "--layers", str(args.layers)],
                          mode.split("-")[0], procs=2, ds_json=ds_json, precision=precision)
        ranks = [json.loads(Path(tmp, f"mem_rank{r}.json").read_text()) for r in range(2)]
    used = {r["precision"] for r in ranks}
    if used != {precision}:
        raise RuntimeError(f"{mode}: launched with --mixed_precision {precision}, the engine ran {sorted(used)}")
    return ranks




def summary(runs: dict, res: _results.Results) -> None:
    """fp32 and bf16 side by side: the worse rank's total at AdamW's step, and its ratio to DDP in
    the same precision."""
    labels = list(runs)
    modes = [m for m in runs[labels[0]] if all(m in runs[k] for k in labels)]
    print("\nSide by side: per-rank params+master+grads+optim at AdamW's step (max over ranks), MiB, and / DDP:")
    rows = []
    for mode in modes:
        row = [mode]
        for k in labels:
            ddp = max(step_total(r, "step") for r in runs[k]["ddp"]) if "ddp" in runs[k] else None
            t = max(step_total(r, "step") for r in runs[k][mode])
            row += [mib(t), f"{t / ddp:.3f}" if ddp else "-"]
            if ddp:
                res.ratio(f"{mode} / ddp, {k}", t / ddp)
        rows.append(row)
    print(res.table("summary", ["mode", *[h for k in labels for h in (f"{k} total", f"{k} / DDP")]], rows))


def report(results: dict, args, precision: str, res: _results.Results) -> None:
    print(f"\n=== mixed precision: {precision} ===")

    n = results[next(iter(results))][0]["step"]["numel"]
    print(f"UNet widths {args.widths}, attention {args.attention}, {args.layers} layer(s)/block: "
          f"{n / 1e6:.2f}M params = {mib(4 * n)} MiB in fp32; 2 ranks")
    cats = list(CATS)

    def total(b: dict) -> int:
        return sum(b.get(c, 0) for c in cats)

    print("\nAt AdamW's step (grads and moments both alive), per-rank MiB, rank 0 / rank 1:")
    ddp = max(total(r["step"]["bytes"]) for r in next(iter(results.values())))
    rows = []
    for mode, ranks in results.items():
        b = [r["step"]["bytes"] for r in ranks]
        rows.append([mode, *["/".join(mib(x.get(c, 0)) for x in b) for c in cats], "/".join(mib(total(x)) for x in b),
                     f"{max(total(x) for x in b) / ddp:.3f}", "/".join(mib(x.get("other", 0)) for x in b),
                     "/".join(f"{r['step']['rss']['VmRSS']:.0f}" for r in ranks)])
    print(res.table(f"{precision}-step", ["mode", "params", "master", "grads", "optim state", "total", "total / DDP",
                                          "other buffers (not in total)", "process RSS"], rows))

    print("\nOther moments of the same step, rank 0 MiB (params+master+grads+optim; ratio to the first mode):")
    rows = []
    first = {ph: total(next(iter(results.values()))[0][ph]["bytes"]) for ph in ("forward", "between")}
    for mode, ranks in results.items():
        f, btw = ranks[0]["forward"]["bytes"], ranks[0]["between"]["bytes"]
        rows.append([mode, mib(f.get("params", 0)), mib(total(f)), f"{total(f) / first['forward']:.3f}",
                     mib(total(btw)), f"{total(btw) / first['between']:.3f}", mib(btw.get("grads", 0)), mib(btw.get("other", 0))])
    print(res.table(f"{precision}-moments", ["mode", "params at end of forward", "total at end of forward", "ratio",
                                             "total between steps", "ratio", "grads between steps", "other between steps"],
                    rows))

    print("\nWhere the bytes are at the step (rank 0, MiB; entries >= 64 KiB):")
    for mode, ranks in results.items():
        where = sorted(((k, v) for k, v in ranks[0]["step"]["where"].items() if v >= 2**16), key=lambda kv: -kv[1])
        print(f"  {mode}: " + "; ".join(f"{k} {mib(v)}" for k, v in where))
    print("Between steps, where it differs from the step:")
    for mode, ranks in results.items():
        step, btw = ranks[0]["step"]["where"], ranks[0]["between"]["where"]
        diff = [(k, v) for k, v in btw.items() if v >= 2**16 and abs(v - step.get(k, 0)) >= 2**16]
        diff += [(k, 0) for k, v in step.items() if v >= 2**16 and k not in btw]
        print(f"  {mode}: " + ("; ".join(f"{k} {mib(v)}" for k, v in sorted(diff)) or "same"))

if __name__ == "__main__":
    main()

"""Full fine-tuning vs LoRA (rank 4 and 16) of the same text UNet: trainable parameters, optimizer
state bytes per rank, gradient bytes and step time, side by side with ratios to full fine-tuning.

    python benchmarks/lora.py                 # SD-like text UNet (64,128,256), 32x32x4 latents, batch 4
    python benchmarks/lora.py --quick         # a smaller UNet, fewer repeats
    python benchmarks/lora.py --json benchmarks/results/lora.json

Each contender is the real stage-2 step: `DiffusionTask.build()` (LoRA injected through peft with
`lora.rank` > 0, base frozen), the task's AdamW over the parameters that require grad, and
`DiffusionTask.losses` from cached text states (`batch.text`, as `ldm data encode --text-encoder`
shards give them, so the text encoder's cost is not in the ratio).

What is counted, after the third step:
- trainable: parameters AdamW updates;
- optimizer state: bytes of AdamW's state tensors (exp_avg, exp_avg_sq, step). Under DDP every rank
  holds all of it (the "DDP" column, measured); ZeRO-1/2 partition it over ranks (the "ZeRO-2, 2
  ranks" column: the measured bytes / 2, DeepSpeed's even split);
- gradients: bytes of `.grad` tensors (frozen weights get none);
- step time: median milliseconds per step over interleaved segments (A B C, C B A, ...; see
  _common.py), on 1 thread, by wall clock and by this process's CPU time (the steadier on a shared
  machine); the ratios are medians of the per-repeat ratios. A LoRA step still back-propagates
  through the whole frozen UNet (the adapters sit inside it): it saves the weight gradients and the
  optimizer update, not the activation gradients.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

import _results
from _common import Contender, interleave, median, median_ratios, set_threads
from ldm_system.data.stream_worker import Batch
from ldm_system.diffusion.config import DiffusionConfig
from ldm_system.models.latent import LatentCodec
from ldm_system.models.lora import LoRAConfig
from ldm_system.models.text import TextEncoder, save_random_text_encoder
from ldm_system.models.unet import UNetConfig
from ldm_system.train.diffusion_task import DiffusionTask, OptimConfig

TOKENS, TEXT_DIM = 16, 64


class Stepper:
    """One contender: the task's modules and optimizer, stepping on one fixed batch."""

    def __init__(self, unet: UNetConfig, text: TextEncoder, rank: int, batch: Batch) -> None:
        torch.manual_seed(0)  # the same base weights for every contender
        lora = LoRAConfig(rank=rank, alpha=rank) if rank else None
        self.task = DiffusionTask(unet, DiffusionConfig(), OptimConfig(lr=1e-4), LatentCodec.identity(), "latent",
                                  text=text, lora=lora, cached_null=text.null())
        self.modules = self.task.build()
        self.opt = self.task.optimizers(self.modules)["unet"]
        self.batch = batch

    def step(self) -> None:
        for _, loss in self.task.losses(self.modules, self.batch, 0):
            self.opt.zero_grad(set_to_none=False)  # keep .grad allocated: counted below
            loss.backward()
            self.opt.step()

    def trainable(self) -> int:
        return sum(p.numel() for g in self.opt.param_groups for p in g["params"])

    def optimizer_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self.opt.state.values() for t in s.values()
                   if isinstance(t, torch.Tensor))

    def grad_bytes(self) -> int:
        return sum(p.grad.numel() * p.grad.element_size() for p in self.modules["unet"].parameters()
                   if p.grad is not None)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="64,128,256", help="UNet block_out_channels")
    ap.add_argument("--size", type=int, default=32, help="latent side")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2, help="training steps per timed segment")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ranks", default="4,16")
    _results.add_options(ap, quick="UNet (32,64), 16x16 latents, 3 repeats")
    a = ap.parse_args(argv)
    if a.quick:
        a.widths, a.size, a.repeats = "32,64", 16, 3
    set_threads(1)
    widths = tuple(int(w) for w in a.widths.split(","))
    unet = UNetConfig(sample_size=a.size, in_channels=4, block_out_channels=widths,
                      attention_levels=(False,) + (True,) * (len(widths) - 1), layers_per_block=2,
                      attention_head_dim=32, norm_num_groups=32, conditioning="text", cross_attention_dim=TEXT_DIM)
    with tempfile.TemporaryDirectory() as tmp:
        text = TextEncoder.from_pretrained(save_random_text_encoder(Path(tmp) / "clip", hidden_size=TEXT_DIM,
                                                                    max_length=TOKENS), TOKENS)
    g = torch.Generator().manual_seed(0)
    n = a.batch_size
    batch = Batch(torch.randn(n, 4, a.size, a.size, generator=g), torch.full((n,), -1), [""] * n,
                  [str(i) for i in range(n)], text=torch.randn(n, TOKENS, TEXT_DIM, generator=g))
    ranks = [int(r) for r in a.ranks.split(",")]
    steppers = {"full": Stepper(unet, text, 0, batch), **{f"LoRA r{r}": Stepper(unet, text, r, batch) for r in ranks}}

    def segment(s: Stepper):
        def run() -> int:
            for _ in range(a.steps):
                s.step()
            return a.steps * n
        return run

    rates = interleave([Contender(k, segment(s)) for k, s in steppers.items()], a.repeats)  # images/s
    res = _results.start("lora", a)
    total = sum(p.numel() for p in steppers["full"].modules["unet"].parameters())
    full = steppers["full"]
    paired = median_ratios(rates, "full")  # per repeat: this one's images/s over full's = full's step time / this
    rows = []
    for name, s in steppers.items():
        opt, grads = s.optimizer_bytes(), s.grad_bytes()
        rows.append([name, s.trainable(), f"{100 * s.trainable() / total:.2f}%", f"{opt / 2**20:.2f}",
                     f"{opt / 2 / 2**20:.2f}", f"{grads / 2**20:.2f}", f"{1e3 * n / median(rates[name]['wall']):.0f}",
                     f"{1e3 * n / median(rates[name]['cpu']):.0f}", f"{full.optimizer_bytes() / opt:.0f}x",
                     f"{paired[f'{name}, wall']:.2f}x", f"{paired[f'{name}, cpu']:.2f}x"])
        res.ratio(f"{name}: trainable parameters", s.trainable())
        res.ratio(f"{name}: optimizer bytes, full / this", full.optimizer_bytes() / opt)
        res.ratio(f"{name}: step time, full / this (wall)", paired[f"{name}, wall"])
        res.ratio(f"{name}: step time, full / this (CPU)", paired[f"{name}, cpu"])
    print(f"\nUNet {widths}, {total:,} parameters, latents {n}x4x{a.size}x{a.size}, {TOKENS} text tokens; "
          f"LoRA on to_q, to_k, to_v, to_out.0 (self- and cross-attention)\n")
    print(res.table("lora", ["", "trainable", "of UNet", "optimizer MiB/rank (DDP)", "optimizer MiB/rank (ZeRO-2, 2 ranks)",
                             "grads MiB", "step ms (wall)", "step ms (CPU)", "optimizer: full / this",
                             "step: full / this (wall)", "step: full / this (CPU)"], rows))
    res.save(a.json)


if __name__ == "__main__":
    sys.exit(main())

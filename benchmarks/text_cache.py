"""Stage-2 steps/s of a text model with cached text embeddings vs encoding every caption online with
the frozen text encoder, measured side by side in one run.

    python benchmarks/text_cache.py            # batch 8, 5 repeats of 2 steps, ~3 min on 2 CPU cores
    python benchmarks/text_cache.py --quick    # batch 4, 3 repeats of 1 step
    python benchmarks/text_cache.py --json benchmarks/results/text_cache.json

The encoder is a randomly initialised `transformers.CLIPTextModel` of CLIP ViT-L/14's text-tower size
(hidden 768, 12 layers, 12 heads, MLP 3072, vocabulary 49408, 77 tokens: 123 M parameters), built
offline with a character-level tokenizer (`save_random_text_encoder`); cost does not depend on the
weights' values. Both contenders run the real `DiffusionTask` step (condition dropout, noise,
timestep, text UNet with cross-attention to the 77 x 768 states, eps-MSE, AdamW) without the engine:

- "online": the task encodes the batch's captions with the encoder (fp32, no grad) every step;
- "cached": the batch carries the captions' states (what `ldm data encode --text-encoder` stores,
  fp16 on disk, float32 in the batch) and the task uses them with the cached null states.

What caching saves is one encoder forward per step, so the ratio grows as the UNet shrinks: the
UNet's widths and latent size are printed and recorded with the numbers.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import _results
from _common import Contender, interleave, median_ratios, num_params, parse_ints, ratio_rows, set_threads
from ldm_system.data.stream_worker import Batch
from ldm_system.diffusion.config import DiffusionConfig
from ldm_system.models.latent import LatentCodec
from ldm_system.models.text import TextEncoder, save_random_text_encoder
from ldm_system.models.unet import UNetConfig
from ldm_system.train.diffusion_task import DiffusionTask, OptimConfig

CLIP_L = dict(hidden_size=768, layers=12, heads=12, intermediate_size=3072, vocab_size=49408, max_length=77)
WORDS = "a photo of red blue small large old new cat dog house car tree street shoe bag at night in snow".split()


def captions(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (8,), generator=g).tolist()) for _ in range(n)]


class Stepper:
    """One `DiffusionTask` step (losses → backward → AdamW) on in-memory batches."""

    def __init__(self, task: DiffusionTask) -> None:
        torch.manual_seed(0)
        self.task, self.modules = task, task.build()
        self.opt = task.optimizers(self.modules)["unet"]

    def step(self, batch: Batch) -> None:
        for _, loss in self.task.losses(self.modules, batch, 0):
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--latent", type=int, default=16, help="latent side (4 channels; 16: 128 px at f = 8)")
    ap.add_argument("--widths", default="64,128,256", help="UNet block widths; cross-attention at the lower two")
    ap.add_argument("--steps", type=int, default=2, help="steps per timed segment")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    _results.add_options(ap, quick="batch 4, 3 repeats of 1 step")
    args = ap.parse_args()
    if args.quick:
        args.batch_size, args.repeats, args.steps = 4, 3, 1
    set_threads(args.threads)

    folder = save_random_text_encoder(Path(tempfile.mkdtemp(prefix="bench-clip-l-")), **CLIP_L)
    enc = TextEncoder.from_pretrained(folder, max_length=CLIP_L["max_length"])
    widths = parse_ints(args.widths)
    unet = UNetConfig(sample_size=args.latent, in_channels=4, block_out_channels=widths,
                      attention_levels=tuple(i > 0 for i in range(len(widths))), layers_per_block=1,
                      attention_head_dim=64, norm_num_groups=32, conditioning="text", cross_attention_dim=768)
    diffusion = DiffusionConfig(cond_drop_prob=0.1)
    online = Stepper(DiffusionTask(unet, diffusion, OptimConfig(), LatentCodec.identity(), "latent", text=enc))
    null = enc.null().half().float()  # as cached: fp16 on disk
    cached = Stepper(DiffusionTask(unet, diffusion, OptimConfig(), LatentCodec.identity(), "latent", text=enc,
                                   cached_null=null))
    cached.task.to_device(torch.device("cpu"))

    b = args.batch_size
    batches = []  # a few distinct batches, each with its captions' cached states
    for i in range(4):
        caps = captions(b, i)
        batches.append(Batch(torch.randn(b, 4, args.latent, args.latent), torch.full((b,), -1), caps,
                             [f"{i}-{j}" for j in range(b)], text=enc.encode(caps).half().float()))
    print(f"text encoder: CLIPTextModel {num_params(enc.model) / 1e6:.0f} M parameters (CLIP ViT-L/14 text size); "
          f"UNet {widths} on {args.latent}x{args.latent}x4 latents: {num_params(online.modules['unet']) / 1e6:.1f} M; "
          f"batch {b}")

    def segment(stepper: Stepper):
        def run() -> int:
            for s in range(args.steps):
                stepper.step(batches[s % len(batches)])
            return args.steps
        return run

    rates = interleave([Contender("online", segment(online)), Contender("cached", segment(cached))], args.repeats,
                       log=lambda line: print(line.replace("img/s", "steps/s")))
    res = _results.start("text_cache", args)
    res.settings.update({"text_encoder_params_M": round(num_params(enc.model) / 1e6, 1),
                         "unet_params_M": round(num_params(online.modules["unet"]) / 1e6, 1)})
    print(res.table("rates", ["text states", "clock", "steps/s (median)", "segments min–max",
                              "vs online (median per repeat)"], ratio_rows(rates, "online")))
    res.ratios.update({k: v for k, v in median_ratios(rates, "online").items() if k.startswith("cached")})
    print(f"cached / online steps/s: {res.ratios['cached, wall']:.2f}x (wall), {res.ratios['cached, cpu']:.2f}x (CPU)")
    res.save(args.json)


if __name__ == "__main__":
    main()

"""Several sample requests drawn as one UNet batch, each exactly as it would be drawn alone.

Requests merge when they share everything the loop applies to the whole batch (`merge_key`: sampler,
steps, eta, guidance, image size, and which conditioning they give). Each keeps its own seed: its
x_T is drawn from its own generator, and a stochastic sampler (DDPM, DDIM with eta > 0) draws its
step noise for its own rows from that same generator, through one sampler instance per request
(`_SlicedSampler`). So a request's images are what `LDMPipeline.sample` returns for it alone; only
the network call is shared. The loop is `diffusion.loop.denoise`, whose step callback reports
progress.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

import torch
from torch import Tensor

from ldm_system.diffusion.base import Sampler, StepOutput
from ldm_system.diffusion.loop import StepCallback, denoise
from ldm_system.serving.requests import SampleRequest


def merge_key(r: SampleRequest) -> Hashable:
    """Requests with equal keys can share one batch."""
    return (r.sampler, r.steps, r.eta, r.guidance, r.height, r.width, r.classes is not None, r.prompts is not None)


class _SlicedSampler:
    """One sampler per request over its rows of the merged batch (multistep history and step noise
    stay per request). Follows the `Sampler` step contract, which is all `denoise` uses."""

    def __init__(self, samplers: Sequence[Sampler], sizes: Sequence[int], generators: Sequence[torch.Generator]):
        self.samplers, self.sizes, self.generators = list(samplers), list(sizes), list(generators)
        self.schedule, self.prediction = samplers[0].schedule, samplers[0].prediction

    def set_timesteps(self, num_steps: int) -> None:
        for s in self.samplers:
            s.set_timesteps(num_steps)
        self.timesteps = self.samplers[0].timesteps

    def step(self, model_output: Tensor, t: int | Tensor, sample: Tensor,
             generator: torch.Generator | None = None) -> StepOutput:
        outs = [s.step(o, t, x, generator=g) for s, o, x, g in
                zip(self.samplers, model_output.split(self.sizes), sample.split(self.sizes), self.generators)]
        return StepOutput(torch.cat([o.prev_sample for o in outs]), torch.cat([o.pred_x0 for o in outs]))

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return self.samplers[0].add_noise(x0, noise, t)


@dataclass(frozen=True)
class Prepared:
    """A request's own part of a merged batch: its x_T, its condition rows and its generator."""

    request: SampleRequest
    noise: Tensor  # (num, c, h, w)
    cond: Tensor | None  # (num, ...) class ids or prompt states
    generator: torch.Generator


@torch.no_grad()
def prepare(pipe, r: SampleRequest) -> Prepared:
    """Everything of one request that can fail (size, classes, prompts), before it joins a batch."""
    shape = pipe.latent_shape(r.num, r.height, r.width)
    cond = pipe.conditioning.condition(r.classes, r.prompts, r.num)
    gen = torch.Generator(device="cpu").manual_seed(r.seed)  # as LDMPipeline.sample: x_T, then step noise
    noise = torch.randn(shape, generator=gen, dtype=torch.float32).to(pipe.device)
    return Prepared(r, noise, cond, gen)


@torch.no_grad()
def sample_merged(pipe, parts: Sequence[Prepared], callback: StepCallback | None = None) -> list[Tensor]:
    """Draw every prepared request (all with one `merge_key`) in one batch: one (num, C, H, W)
    tensor in [-1, 1] per request."""
    if not parts:
        raise ValueError("sample_merged needs at least one request")
    first = parts[0].request
    if any(merge_key(p.request) != merge_key(first) for p in parts):
        raise ValueError("requests with different sampler settings cannot share a batch")
    sizes = [p.request.num for p in parts]
    cond = None if parts[0].cond is None else torch.cat([p.cond for p in parts])
    conditioned = first.classes is not None or first.prompts is not None
    guidance = pipe.conditioning.guidance(first.guidance, cond) if conditioned else None
    sampler = _SlicedSampler([pipe._sampler(first.sampler, first.steps, first.eta) for _ in parts], sizes,
                             [p.generator for p in parts])
    sampler.set_timesteps(first.steps)
    x_T = torch.cat([p.noise for p in parts])
    z = denoise(pipe.model_fn, sampler, x_T, cond=cond, guidance=guidance, callback=callback)
    return list(pipe.codec.decode(z).clamp(-1, 1).split(sizes))


__all__ = ["Prepared", "merge_key", "prepare", "sample_merged"]

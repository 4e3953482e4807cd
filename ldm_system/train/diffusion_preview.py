"""Stage-2 training previews: a short DDIM loop from fixed noise, drawn as a labelled grid.

    columns   one per preview class / prompt (`preview.classes`, `preview.prompts`; by default the
              classes 0..K-1, or for text models the class names or the batch's captions), labelled
    rows      max(1, num_images // columns) (unconditional: ⌈√n⌉ columns, ⌈n / columns⌉ rows)
    sections  one per image size: the batch's size, or for a model trained on aspect-ratio buckets
              up to three buckets (the widest, the most populated, the tallest), the rows shared
              among them (at least one each)

Every section starts from the same seed (`preview.seed`, its own generator: previews never shift the
training RNG), so successive previews of one run are comparable.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from ldm_system.diffusion.loop import sample
from ldm_system.diffusion.samplers import SamplerConfig, make_sampler
from ldm_system.models.conditioning import Conditioning
from ldm_system.train.preview_grid import GridSection, LabelledGrid

MAX_BUCKETS = 3


def preview_buckets(buckets: Sequence[dict], channels: int) -> list[tuple[int, int, int]]:
    """Latent shapes (c, h, w) to preview for a bucketed model: the widest, the most populated and the
    tallest of `buckets` ({"width", "height", "count"} in latent pixels), without repeats."""
    used = [b for b in buckets if b.get("count", 1)]
    if not used:
        return []
    picks = [max(used, key=lambda b: b["width"] / b["height"]), max(used, key=lambda b: b["count"]),
             min(used, key=lambda b: b["width"] / b["height"])]
    shapes = list(dict.fromkeys((channels, int(b["height"]), int(b["width"])) for b in picks))
    return sorted(shapes, key=lambda s: -s[2] / s[1])[:MAX_BUCKETS]  # wide → tall


@torch.no_grad()
def draw_preview(
    net: nn.Module,
    model_fn_dtype: torch.dtype,
    conditioning: Conditioning,
    columns: tuple[list, list[str]],
    shapes: list[tuple[int, int, int]],
    num_images: int,
    steps: int,
    guidance_scale: float,
    seed: int,
    schedule,
    prediction_type: str,
    decode: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
) -> LabelledGrid:
    """One section per latent shape in `shapes`; `columns` = (conditions, labels) from
    `Conditioning.columns`."""
    values, labels = columns
    cols = len(values)
    rows = math.ceil(num_images / cols) if not labels else max(1, num_images // cols)
    rows = max(1, rows // len(shapes))
    n = rows * cols
    per_image = values * rows  # row-major: column j is values[j] in every row
    classes = per_image if conditioning.kind == "class" else None
    prompts = per_image if conditioning.kind == "text" else None
    cond = conditioning.condition(classes, prompts, n)  # (n,) ids, (n, L, D) states, or None
    guidance = conditioning.guidance(guidance_scale, cond)
    sampler = make_sampler(SamplerConfig(name="ddim", num_steps=steps), schedule, prediction_type)

    def model_fn(x, t, c):
        c = c.to(model_fn_dtype) if c is not None and c.is_floating_point() else c
        return net(x.to(model_fn_dtype), t, c).float()

    was_training = net.training
    net.eval()
    sections = []
    try:
        for shape in shapes:
            gen = torch.Generator(device="cpu").manual_seed(seed)
            z = sample(model_fn, sampler, (n, *shape), num_steps=steps, cond=cond, guidance=guidance,
                       generator=gen, device=device)
            images = decode(z).clamp(-1, 1).cpu()  # (n, C, H, W)
            title = f"{images.shape[-1]}x{images.shape[-2]}" if len(shapes) > 1 else ""
            sections.append(GridSection(images, cols, title))
    finally:
        net.train(was_training)
    return LabelledGrid(sections, labels)


__all__ = ["draw_preview", "preview_buckets"]

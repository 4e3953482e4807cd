"""The verdict table: the comparison's classic claims, each set against this report's numbers.

The claims are the ones every survey of generative models repeats. Each row names the numbers that
bear on it, read from the scored rows (per family its longest-trained model, see `eval/curves.py`),
and a verdict from a stated rule: "supported", "refuted", or "not measured" when a needed row is
missing. The rules are deliberately simple and printed beside the numbers, so a reader can disagree.

Sharpness is the mean absolute Laplacian of the samples relative to the real images' (1.0 = as
sharp as the data): blur lowers it.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ldm_system.eval.curves import fd_spread, seed_groups, seed_of, split_budget

_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def sharpness(images: torch.Tensor) -> float:
    """Mean |Laplacian| over pixels and channels of (B, C, H, W) images in [-1, 1]."""
    c = images.shape[1]
    k = _LAPLACE.to(images)[None, None].expand(c, 1, 3, 3)
    return float(F.conv2d(images.float(), k, groups=c).abs().mean())


def _latest(rows) -> dict[str, object]:
    """Per family, the scored row with the largest budget (main sampling setting only); of several VAE
    rows (the LDM's autoencoder, a VAE trained as a generator) the best generator, lowest FD."""
    best: dict[str, tuple[float, object]] = {}
    for r in rows:
        if r.error is not None or r.setting or seed_of(r.name):  # seed 0 stands for its family
            continue
        family, minutes = split_budget(r.name)
        key = r.family if r.family in ("data", "vae") else family
        if key == "vae":
            m = -r.fd  # the best generator
        else:
            m = -1.0 if minutes is None else minutes  # the longest-trained
        if key not in best or m > best[key][0]:
            best[key] = (m, r)
    return {k: v[1] for k, v in best.items()}


def _time_to_reach(rows, family: str, target: float) -> float | None:
    """Fewest training minutes at which `family` reached FD <= target (None: never, or no budgets)."""
    reached = [m for r in rows if r.error is None and not r.setting and not seed_of(r.name)
               for f, m in [split_budget(r.name)] if f == family and m is not None and r.fd <= target]
    return min(reached) if reached else None


def verdict_rows(rows) -> list[tuple[str, str, str]]:
    """(claim, the numbers, verdict) for each classic claim."""
    by = _latest(rows)
    data, ldm, pixel, gan, vae, flow, ar, vq_ar = (by.get(k) for k in ("data", "ldm", "pixel", "gan", "vae", "flow", "ar",
                                                                      "vq-ar"))
    ref_sharp = data.sharpness if data is not None and data.sharpness else None
    rel = lambda r: None if r is None or ref_sharp is None or r.sharpness is None else r.sharpness / ref_sharp  # noqa: E731
    out: list[tuple[str, str, str]] = []

    def claim(text: str, need: list, numbers: Callable[[], str], holds: Callable[[], bool], rule: str) -> None:
        if any(x is None for x in need):
            out.append((text, "–", "not measured (a row is missing)"))
        else:
            out.append((text, f"{numbers()} (rule: {rule})", "supported" if holds() else "refuted"))

    models = [r for r in (ldm, pixel, gan, vae, flow, ar, vq_ar) if r is not None]
    best_fd_but = lambda x: min(r.fd for r in models if r is not x)  # noqa: E731
    median_spi_but = lambda x: _median([r.seconds_per_image for r in models if r is not x])  # noqa: E731
    claim("GANs give sharp samples but collapse modes", [gan, data, rel(gan)],
          lambda: f"GAN sharpness {rel(gan):.2f}× data, precision {gan.precision:.3f}, recall {gan.recall:.3f}",
          lambda: rel(gan) >= 0.7 and gan.recall < 0.5 * gan.precision, "sharpness ≥ 0.7× data and recall < ½ precision")
    gan_seeds, ldm_seeds = _seeded_pair(rows, "gan", "ldm")
    claim("GAN training is unstable", [gan_seeds, ldm_seeds],
          lambda: f"FD over {len(gan_seeds[1])} seeds at {gan_seeds[0]:g} min: GAN {_spread_text(gan_seeds[1])}, "
                  f"LDM {_spread_text(ldm_seeds[1])}",
          lambda: _cv(gan_seeds[1]) > 2 * _cv(ldm_seeds[1]),
          "the GAN's FD std/mean across seeds > 2× the LDM's")
    claim("VAEs are blurry", [vae, data, rel(vae)],
          lambda: f"{vae.name} sharpness {rel(vae):.2f}× data, FD {vae.fd:.1f}",
          lambda: rel(vae) < 0.7, "sharpness < 0.7× data")
    claim("Flows give exact likelihood but weaker samples", [flow] + ([ldm] if ldm is not None else [gan]),
          lambda: f"flow {flow.bits_per_dim:.3f} bits/dim, FD {flow.fd:.1f} vs best other FD "
                  f"{best_fd_but(flow):.1f}",
          lambda: flow.bits_per_dim is not None and flow.fd > best_fd_but(flow),
          "a finite bits/dim and an FD above the best family's")
    claim("Autoregressive models are slow to sample", [ar],
          lambda: f"AR {ar.seconds_per_image:.3f} s/image vs median of the others "
                  f"{median_spi_but(ar):.3f}" + ("" if vq_ar is None else
                                                 f"; the VQ-token AR {vq_ar.seconds_per_image:.3f} s/image"),
          lambda: ar.seconds_per_image > 2 * median_spi_but(ar),
          "> 2× the others' median s/image")
    others_than_ldm = [r for r in models if r is not ldm]
    speed = f"; {ldm.seconds_per_image:.3f} s/image vs GAN {gan.seconds_per_image:.4f}" if ldm and gan else ""
    claim("Diffusion gives the best quality but samples slowly", [ldm, others_than_ldm[0] if others_than_ldm else None],
          lambda: f"LDM FD {ldm.fd:.1f} vs best other {best_fd_but(ldm):.1f}{speed}",
          lambda: ldm.fd <= best_fd_but(ldm) and (gan is None or ldm.seconds_per_image > gan.seconds_per_image),
          "lowest FD, and slower than the GAN")
    claim("Latent diffusion is far cheaper than pixel diffusion", [ldm, pixel],
          lambda: _cheaper_numbers(rows, pixel),
          lambda: (_time_to_reach(rows, "ldm", pixel.fd) or math.inf) <= 0.25 * (split_budget(pixel.name)[1] or 0),
          "LDM reaches pixel diffusion's final FD in ≤ ¼ of its training time")
    return out


def _seeded_pair(rows, a: str, b: str) -> tuple[tuple | None, tuple | None]:
    """((minutes, rows of a), (minutes, rows of b)) at the largest budget both trained from several
    seeds; (None, None) when there is none."""
    groups = seed_groups(rows)
    shared = [m for (f, m) in groups if f == a and (b, m) in groups]
    if not shared:
        return None, None
    m = max(shared)
    return (m, groups[(a, m)]), (m, groups[(b, m)])


def _cv(group: list) -> float:
    mean, std = fd_spread(group)
    return std / mean


def _spread_text(group: list) -> str:
    mean, std = fd_spread(group)
    return f"{mean:.1f} ± {std:.1f} (std/mean {std / mean:.3f})"


def _cheaper_numbers(rows, pixel) -> str:
    minutes = split_budget(pixel.name)[1]
    reach = _time_to_reach(rows, "ldm", pixel.fd)
    where = "never within the budgets" if reach is None else f"{reach:g} min"
    return f"pixel diffusion FD {pixel.fd:.1f} after {minutes:g} min; LDM reaches it in {where}"


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if v else math.nan


def verdict_table(rows) -> str:
    lines = ["| claim | numbers here | verdict |", "|---|---|---|"]
    lines += [f"| {c} | {n} | {v} |" for c, n, v in verdict_rows(rows)]
    return "\n".join(lines)


__all__ = ["sharpness", "verdict_rows", "verdict_table"]

"""Curves, not points: quality against training time and against sampling time, across families.

`ldm report` names each model `NAME=DIR`; a name `FAMILY@MINUTES` (e.g. `gan@10`, `ldm@40`) marks a
model saved after that many training minutes, so one report holds every family at several budgets
(`launch/compare.sh` trains them, resuming between budgets). `FAMILY@MINUTES#SEED` (`gan@4#1`) is the
same family and budget trained from another seed: such rows give the FD spread across seeds (training
stability) and stay out of the curves, which follow seed 0. This module turns the scored rows into

- a table per family: minutes, optimizer steps (from the model folder), FD, KID, s/image;
- `curves.png`: FD against training minutes, one line per family (log-scaled x);
- `sampling.png`: FD against sampling seconds per image, one line per model — a diffusion model
  evaluated at several DDIM step counts (`--ldm-steps 50,25,10`: the first is its main row, the
  others are rows named "NAME (DDIM-k)") draws its speed/quality curve;
- a seed table: FD mean ± std per family and budget trained from several seeds.

The plots are drawn with PIL (no plotting library is a dependency).
"""
from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

BUDGET = re.compile(r"^(?P<family>[A-Za-z][\w-]*)@(?P<minutes>\d+(\.\d+)?)(#(?P<seed>\d+))?$")
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
           (140, 86, 75), (127, 127, 127), (188, 189, 34), (227, 119, 194), (0, 0, 0), (0, 60, 130)]
TICK_GAP = 44  # pixels: an x tick closer than this to the previous one is left out (its labels would overlap)


def split_budget(name: str) -> tuple[str, float | None]:
    """`gan@10` (and `gan@10#2`) → ("gan", 10.0); a name without a budget → (name, None)."""
    m = BUDGET.match(name)
    return (m["family"], float(m["minutes"])) if m else (name, None)


def seed_of(name: str) -> int:
    """The training seed a name carries: `gan@4#2` → 2; every other name → 0."""
    m = BUDGET.match(name.split(" (")[0])
    return int(m["seed"]) if m and m["seed"] else 0


def seed_groups(rows) -> dict[tuple[str, float], list]:
    """(family, minutes) → its scored main rows, for budgets trained from two or more seeds."""
    groups: dict[tuple[str, float], list] = {}
    for r in rows:
        family, minutes = split_budget(r.name)
        if r.error is None and not r.setting and minutes is not None:
            groups.setdefault((family, minutes), []).append(r)
    return {k: sorted(v, key=lambda r: seed_of(r.name)) for k, v in groups.items()
            if len({seed_of(r.name) for r in v}) > 1}


def fd_spread(group: list) -> tuple[float, float]:
    """(mean, sample std) of the FDs of one seed group."""
    fds = [r.fd for r in group]
    return statistics.fmean(fds), statistics.stdev(fds)


def seed_table(rows) -> str:
    """Markdown: FD per seed, mean ± std, per family and budget trained from several seeds."""
    groups = seed_groups(rows)
    if not groups:
        return ""
    lines = ["| family | minutes | seeds | FD per seed | FD mean ± std | std / mean |", "|---|---|---|---|---|---|"]
    for (family, minutes), group in sorted(groups.items()):
        mean, std = fd_spread(group)
        per_seed = ", ".join(f"{r.fd:.1f}" for r in group)
        lines.append(f"| {family} | {minutes:g} | {len(group)} | {per_seed} | {mean:.1f} ± {std:.1f} | {std / mean:.3f} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Point:
    series: str
    x: float
    y: float


def line_chart(points: list[Point], path: Path, title: str, xlabel: str, ylabel: str, log_x: bool = False,
               size: tuple[int, int] = (640, 400)) -> Path:
    """`draw_line_chart`, saved to `path`."""
    draw_line_chart(points, title, xlabel, ylabel, log_x, size).save(path)
    return path


def draw_line_chart(points: list[Point], title: str, xlabel: str, ylabel: str, log_x: bool = False,
                    size: tuple[int, int] = (640, 400)) -> Image.Image:
    """Lines through each series' points (sorted by x), axes with a few ticks, a legend."""
    points = [p for p in points if math.isfinite(p.x) and math.isfinite(p.y) and (p.x > 0 or not log_x)]
    if not points:
        raise ValueError(f"{title}: no finite points to plot")
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    xs, ys = [fx(p.x) for p in points], [p.y for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = 0.0, max(ys) * 1.08
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    w, h = size
    left, right, top, bottom = 64, 150, 44, 46
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    px = lambda v: left + (fx(v) - x0) / (x1 - x0) * (w - left - right)  # noqa: E731
    py = lambda v: h - bottom - (v - y0) / (y1 - y0 or 1.0) * (h - top - bottom)  # noqa: E731
    d.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    d.text((left, 10), title, fill="black")
    d.text(((left + w - right) // 2 - 3 * len(xlabel), h - 18), xlabel, fill="black")
    d.text((4, top - 18), ylabel, fill="black")
    for i in range(5):  # y ticks
        v = y0 + (y1 - y0) * i / 4
        d.line([left - 4, py(v), left, py(v)], fill="black")
        d.text((6, py(v) - 6), f"{v:.3g}", fill="black")
    for v in x_ticks(sorted({p.x for p in points}), px, log_x):
        d.line([px(v), h - bottom, px(v), h - bottom + 4], fill="black")
        d.text((px(v) - 8, h - bottom + 6), f"{v:.3g}", fill="black")
    series = list(dict.fromkeys(p.series for p in points))
    for k, name in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        pts = sorted((px(p.x), py(p.y)) for p in points if p.series == name)
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for x, y in pts:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        d.line([w - right + 12, top + 8 + 16 * k, w - right + 30, top + 8 + 16 * k], fill=colour, width=3)
        d.text((w - right + 36, top + 2 + 16 * k), name, fill="black")
    return img


def x_ticks(values: list[float], px, log_x: bool) -> list[float]:
    """The measured x values, or on a log axis spanning more than a decade the 1-2-5 values inside it;
    thinned so that no two labels are closer than TICK_GAP pixels."""
    lo, hi = values[0], values[-1]
    if log_x and hi / lo > 10:
        values = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                  for m in (1, 2, 5) if lo <= m * 10.0 ** k <= hi]
    kept: list[float] = []
    for v in values:
        if not kept or px(v) - px(kept[-1]) >= TICK_GAP:
            kept.append(v)
    return kept


def budget_table(rows) -> str:
    """Markdown: the rows that carry a budget, by family then minutes."""
    scored = [(split_budget(r.name.split(" (")[0]), r) for r in rows if r.error is None]
    scored = [((fam, mins), r) for (fam, mins), r in scored if mins is not None]
    if not scored:
        return ""
    lines = ["| family | minutes | steps | FD-effnet | KID-effnet (×10³) | s / image |", "|---|---|---|---|---|---|"]
    for (fam, mins), r in sorted(scored, key=lambda t: (t[0][0], t[0][1], t[1].name)):
        steps = "–" if r.step is None else str(r.step)
        lines.append(f"| {r.name} | {mins:g} | {steps} | {r.fd:.2f} | {1e3 * r.kid:.2f} ± {1e3 * r.kid_std:.2f} | "
                     f"{r.seconds_per_image:.4f} |")
    return "\n".join(lines)


def write_curves(rows, out: Path) -> list[Path]:
    """curves.png (FD vs training minutes) when rows carry several budgets; sampling.png (FD vs s/image)
    when a model was scored at several sampling settings. Returns the files written."""
    written = []
    ok = [r for r in rows if r.error is None and r.family != "data"]
    budget = []
    ok = [r for r in ok if seed_of(r.name) == 0]  # the curves follow seed 0; other seeds are a table
    for r in ok:
        family, minutes = split_budget(r.name)
        if minutes is not None and not r.setting:
            budget.append(Point(family, minutes, r.fd))
    if len({p.x for p in budget}) > 1:
        written.append(line_chart(budget, out / "curves.png", "FD vs training time (lower is better)",
                                  "training minutes (log scale)", "FD-effnet", log_x=True))
    base = lambda r: r.name.split(" (")[0]  # noqa: E731  "ldm@40 (DDIM-10)" belongs to "ldm@40"
    latest: dict[str, float] = {}  # per family, only its longest-trained model enters the sampling chart
    for r in ok:
        family, minutes = split_budget(base(r))
        latest[family] = max(latest.get(family, -1.0), -1.0 if minutes is None else minutes)
    sampling = [Point(base(r), r.seconds_per_image, r.fd) for r in ok
                if (split_budget(base(r))[1] or -1.0) == latest[split_budget(base(r))[0]]]
    if any(r.setting for r in ok):
        written.append(line_chart(sampling, out / "sampling.png", "FD vs sampling time (lower is better)",
                                  "seconds per image (log scale)", "FD-effnet", log_x=True))
    return written


__all__ = ["Point", "budget_table", "draw_line_chart", "fd_spread", "line_chart", "seed_groups", "seed_of", "seed_table", "split_budget",
           "write_curves", "x_ticks"]

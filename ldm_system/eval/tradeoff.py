"""The f trade-off (the LDM paper's Fig. 6 question, at our scale): how far to compress before diffusing.

`launch/compare.sh` trains the same diffusion UNet for the same CPU-minutes on pixels (f = 1, family
`pixel`) and on the latents of KL autoencoders with f = 2, 4 and 8 (families `ldm-f2`, `ldm`,
`ldm-f8`), each autoencoder trained for the same minutes. A smaller f keeps more detail (a higher
reconstruction ceiling) but leaves the UNet more positions to denoise, so it makes fewer optimizer
steps per minute; a larger f is cheap per step but its autoencoder bounds the quality. This module
reads the scored rows at the largest budget where at least two f were trained and writes

- a table: f, the shape the UNet denoises, the autoencoder's reconstruction PSNR on the test images,
  optimizer steps per training minute, FD, sampling seconds per image;
- `tradeoff.png`: FD against f beside optimizer steps per minute against f (log-2 x axes).
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from ldm_system.eval.curves import Point, draw_line_chart, seed_of, split_budget

F_OF_FAMILY = {"pixel": 1, "ldm-f2": 2, "ldm": 4, "ldm-f8": 8}


def tradeoff_rows(rows) -> tuple[float | None, dict[int, object]]:
    """(minutes, {f: row}) at the largest budget with at least two f scored (seed 0, main setting)."""
    by_budget: dict[float, dict[int, object]] = {}
    for r in rows:
        family, minutes = split_budget(r.name)
        if r.error is None and not r.setting and not seed_of(r.name) and minutes is not None and family in F_OF_FAMILY:
            by_budget.setdefault(minutes, {})[F_OF_FAMILY[family]] = r
    usable = [m for m, at in by_budget.items() if len(at) > 1]
    if not usable:
        return None, {}
    minutes = max(usable)
    return minutes, dict(sorted(by_budget[minutes].items()))


def _steps_per_minute(row, minutes: float) -> float | None:
    return None if row.step is None else row.step / minutes


def tradeoff_table(rows) -> str:
    minutes, at = tradeoff_rows(rows)
    if not at:
        return ""
    lines = [f"At {minutes:g} training minutes each (the same UNet and batch size; each autoencoder trained for the same "
             "minutes):", "",
             "| f | model | denoised shape | autoencoder PSNR (dB) | steps / min | FD-effnet | s / image |",
             "|---|---|---|---|---|---|---|"]
    for f, r in at.items():
        shape = "×".join(map(str, r.latent_shape)) if r.latent_shape else "–"
        ceiling = "– (pixels)" if r.recon_psnr is None else f"{r.recon_psnr:.2f}"
        spm = _steps_per_minute(r, minutes)
        lines.append(f"| {f} | {r.name} | {shape} | {ceiling} | {'–' if spm is None else f'{spm:.1f}'} | {r.fd:.2f} | "
                     f"{r.seconds_per_image:.4f} |")
    return "\n".join(lines)


def write_tradeoff(rows, out: Path) -> Path | None:
    """tradeoff.png (FD vs f | steps per minute vs f), or None when fewer than two f were scored."""
    minutes, at = tradeoff_rows(rows)
    if not at:
        return None
    label = f"{minutes:g} min each"
    fd = draw_line_chart([Point(label, f, r.fd) for f, r in at.items()], "FD vs downsampling factor f (lower is better)",
                         "f (log scale; 1 = pixels)", "FD-effnet", log_x=True, size=(520, 360))
    speed_points = [Point(label, f, s) for f, r in at.items() if (s := _steps_per_minute(r, minutes)) is not None]
    panels = [fd]
    if speed_points:
        panels.append(draw_line_chart(speed_points, "Training speed vs f (higher is faster)", "f (log scale; 1 = pixels)",
                                      "optimizer steps / min", log_x=True, size=(520, 360)))
    canvas = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        canvas.paste(p, (x, 0))
        x += p.width
    path = out / "tradeoff.png"
    canvas.save(path)
    return path


__all__ = ["F_OF_FAMILY", "tradeoff_rows", "tradeoff_table", "write_tradeoff"]

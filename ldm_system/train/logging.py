"""Rank-0-only run logging: resolved config, progress bar, TensorBoard scalars, image grids."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ldm_system.config import dump_config
from ldm_system.train.preview_grid import LabelledGrid, as_image

log = logging.getLogger("ldm_system")


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix(self, *a: Any, **kw: Any) -> None: ...
    def close(self) -> None: ...


class RunLogger:
    def __init__(self, out: Path, is_main: bool, run_config: Any = None) -> None:
        self.out, self.is_main = out, is_main
        self.writer = None
        if not is_main:
            return
        out.mkdir(parents=True, exist_ok=True)
        if run_config is not None:
            dump_config(run_config, out / "config.yaml")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"))
        except ImportError:  # tensorboard is a dependency, but logging must never stop training
            log.warning("tensorboard is not installed; scalars go to the progress bar only")

    def progress(self, total: int, initial: int, enabled: bool = True):
        if not (self.is_main and enabled):
            return _NoBar()
        return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)

    def scalars(self, stats: dict[str, float], step: int, bar: Any = None) -> None:
        if not self.is_main:
            return
        if self.writer is not None:
            for k, v in stats.items():
                self.writer.add_scalar(k, v, step)
        if bar is not None:
            short = {k.split("/")[-1] if k.startswith("loss/") else k: v for k, v in stats.items() if k.startswith("loss/")}
            bar.set_postfix({k: f"{v:.4f}" for k, v in short.items()})
        with open(self.out / "metrics.jsonl", "a") as f:
            import json

            f.write(json.dumps({"step": step, **stats}) + "\n")

    def grid(self, images: torch.Tensor | LabelledGrid, name: str, step: int | None = None) -> None:
        """previews/NAME (PNG) and, with `step`, the same image in TensorBoard under "preview"."""
        if not self.is_main:
            return
        image = as_image(images)
        path = self.out / "previews" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        if self.writer is not None and step is not None:
            import numpy as np

            self.writer.add_image("preview", np.asarray(image), step, dataformats="HW" if image.mode == "L" else "HWC")
            self.writer.flush()

    def info(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(msg)

    def warn(self, msg: str) -> None:
        if self.is_main:
            log.warning(msg)
            tqdm.write(f"warning: {msg}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

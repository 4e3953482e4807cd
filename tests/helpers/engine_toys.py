"""A toy task and a resumable toy stream for engine tests (tests/unit/test_engine*.py)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ldm_system.train.engine_config import CheckpointConfig, EMAConfig, EngineConfig, FaultConfig, LRConfig, LogConfig


class ToyStream:
    """A resumable, deterministic stream of (x, y) regression batches."""

    def __init__(self, seed: int = 0, batch: int = 4, nan_at: set[int] | None = None) -> None:
        self.seed, self.batch, self.pos, self.nan_at = seed, batch, 0, nan_at or set()

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.pos)
            x = torch.randn(self.batch, 3, generator=g)
            y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
            if self.pos in self.nan_at:
                x = x * float("nan")
            self.pos += 1
            yield x, y

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, s):
        self.pos = s["pos"]


class ToyTask:
    def build(self):
        return {"net": nn.Linear(3, 1)}

    def optimizers(self, modules):
        return {"net": torch.optim.AdamW(modules["net"].parameters(), lr=0.05)}

    def losses(self, modules, batch, step):
        x, y = batch
        # the noise uses the global RNG, so exact resume needs RNG state restored too
        pred = modules["net"](x) + 0.01 * torch.randn_like(y)
        self._last = float(((pred - y) ** 2).mean().detach())
        yield "net", ((pred - y) ** 2).mean()

    def metrics(self):
        return {"toy/mse": self._last}

    def preview(self, modules, batch):
        return torch.zeros(2, 1, 4, 4)


def toy_cfg(tmp_path: Path, steps: int = 12, ckpt_every: int = 4, ema_module: str = "net", max_nan_steps: int = 5,
            lr: LRConfig = LRConfig(), **kw) -> EngineConfig:
    """The toy run's engine config; the keywords the tests vary, plus any top-level EngineConfig field."""
    return EngineConfig(out_dir=str(tmp_path / "run"), steps=steps, lr=lr,
                        ema=EMAConfig(module=ema_module, decay=0.9), checkpoint=CheckpointConfig(ckpt_every, keep_last=2),
                        log=LogConfig(every=4, progress=False), faults=FaultConfig(max_nan_steps=max_nan_steps), **kw)

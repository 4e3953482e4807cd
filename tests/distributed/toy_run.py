"""Entry script for multi-process engine tests: `accelerate launch ... toy_run.py OUT STEPS [resume]`.

A small MLP regression task; prints nothing, writes final (gathered) weights to OUT/final.pt on rank 0.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from ldm_system.train.engine import Trainer
from ldm_system.train.engine_config import CheckpointConfig, EMAConfig, EngineConfig, LogConfig


class Stream:
    def __init__(self, rank: int, world: int, batch: int) -> None:
        self.rank, self.world, self.batch, self.pos = rank, world, batch, 0

    def __iter__(self):
        while True:
            # global batch `pos` is split across ranks, so 1 and 2 processes see the same data
            g = torch.Generator().manual_seed(self.pos)
            x = torch.randn(self.batch * self.world, 8, generator=g)
            y = 0.5 * x[:, :1] - x[:, 1:2] + 0.25 * torch.tanh(x[:, 2:3])
            lo = self.rank * self.batch
            self.pos += 1
            yield x[lo : lo + self.batch], y[lo : lo + self.batch]

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, s):
        self.pos = s["pos"]


class MLPTask:
    def build(self):
        torch.manual_seed(0)  # identical init regardless of world size
        return {"net": nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1))}

    def optimizers(self, modules):
        return {"net": torch.optim.AdamW(modules["net"].parameters(), lr=1e-2)}

    def losses(self, modules, batch, step):
        x, y = batch
        self._l = ((modules["net"](x) - y) ** 2).mean()
        yield "net", self._l

    def metrics(self):
        return {"mse": float(self._l.detach())}

    def preview(self, modules, batch):
        return modules["net"](batch[0])[:4].view(4, 1, 1, 1).tanh()


def main() -> None:
    out, steps = sys.argv[1], int(sys.argv[2])
    resume = sys.argv[3] if len(sys.argv) > 3 else None
    world = int(__import__("os").environ.get("WORLD_SIZE", "1"))
    rank = int(__import__("os").environ.get("RANK", "0"))
    cfg = EngineConfig(out_dir=out, steps=steps, max_grad_norm=0.0, ema=EMAConfig("net", decay=0.9),
                       checkpoint=CheckpointConfig(every=5), log=LogConfig(every=1, progress=False))
    tr = Trainer(MLPTask(), Stream(rank, world, 8 // world), cfg, micro_batch=8 // world, resume=resume)
    tr.fit()
    acc = tr.accelerator
    sd = acc.get_state_dict(tr.p.modules["net"])
    with tr.ema.swap():
        ema_sd = acc.get_state_dict(tr.p.modules["net"])
    local = [p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in tr.raw["net"].parameters()]
    if acc.is_main_process:
        torch.save({"state": sd, "ema": ema_sd, "ema_updates": tr.ema.num_updates, "local_numel": sum(local)},
                   f"{out}/final.pt")
    tr.close()


if __name__ == "__main__":
    main()

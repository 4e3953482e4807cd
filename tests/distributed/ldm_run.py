"""Entry script: `accelerate launch ... ldm_run.py CONFIG OUT [--set k=v ...] [--resume latest]`.

Runs stage-2 training through `run_ldm`, then writes OUT/gathered.pt on rank 0 with the gathered
raw parameters, the EMA update count and each rank's locally held parameter numel.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from ldm_system.config import load_config
from ldm_system.train.runs import LDMRunConfig, run_ldm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--resume", default=None)
    a = ap.parse_args()
    cfg = load_config(LDMRunConfig, a.config, a.overrides)
    tr = run_ldm(cfg, resume=a.resume)
    acc = tr.accelerator
    sd = acc.get_state_dict(tr.p.modules["unet"])
    local = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in tr.raw["unet"].parameters())
    total = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in tr.raw["unet"].parameters())
    numels = acc.gather(torch.tensor([local], device=acc.device)).tolist()
    if acc.is_main_process:
        torch.save({"state": sd, "ema_updates": tr.ema.num_updates if tr.ema else 0, "local_numel": numels,
                    "total_numel": total, "step": tr.step, "world": int(os.environ.get("WORLD_SIZE", "1"))},
                   os.path.join(cfg.train.out_dir, "gathered.pt"))
        print(json.dumps({"step": tr.step, "local_numel": numels, "total": total}))
    tr.close()


if __name__ == "__main__":
    main()

"""SIGKILL a real `ldm train` process mid-run, resume it, and get the uninterrupted run's weights.

CPU training here is deterministic (one thread, num_workers=0, RNG of torch/numpy/python restored
from the checkpoint, data stream position restored), so the comparison is bit-exact.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from launch_utils import ROOT, env
from ldm_fixtures import LDM_DEBUG, build_debug_latents


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return build_debug_latents(tmp_path_factory.mktemp("kill-data"))


def _cmd(latents, out, steps, resume=False):
    cmd = [sys.executable, "-m", "ldm_system.cli", "train", "--config", str(LDM_DEBUG),
           "--set", f"data.shards={latents}", "--set", f"train.out_dir={out}", "--set", f"train.steps={steps}",
           "--set", "train.checkpoint.every=2", "--set", "train.checkpoint.keep_last=2", "--set", "data.batch_size=4",
           "--set", "preview.num_images=2", "--set", "preview.steps=2"]
    return cmd + (["--resume", "latest"] if resume else [])


def _final(out, step):
    return load_file(str(out / "checkpoints" / f"step_{step:08d}" / "weights" / "unet.safetensors"))


def test_kill_then_resume_matches_uninterrupted(latents, tmp_path):
    e = env()
    full = tmp_path / "full"
    subprocess.run(_cmd(latents, full, 10), env=e, cwd=ROOT, check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(latents, killed, 10), env=e, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step_00000004").is_dir():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "step_00000010").exists()

    subprocess.run(_cmd(latents, killed, 10, resume=True), env=e, cwd=ROOT, check=True, capture_output=True, timeout=600)
    a, b = _final(full, 10), _final(killed, 10)
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after kill + resume"
    ea = load_file(str(full / "checkpoints" / "step_00000010" / "weights" / "unet.ema.safetensors"))
    eb = load_file(str(killed / "checkpoints" / "step_00000010" / "weights" / "unet.ema.safetensors"))
    for k in ea:
        assert torch.equal(ea[k], eb[k]), f"EMA {k} differs after kill + resume"

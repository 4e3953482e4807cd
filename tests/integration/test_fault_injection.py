"""Crash anywhere, lose nothing (slow).

- SIGKILL a real 1-process `ldm train` at 20 random moments (seeded), many of them inside
  checkpoint writes (a checkpoint every step) or while the stream loads data, resume with
  `--resume latest` after each, and finish: the final weights and EMA equal an uninterrupted run's
  bit for bit.
- Fill the disk during a checkpoint (a 2-checkpoint tmpfs; root only, skipped otherwise): the run
  fails with ENOSPC, `latest` is still the previous complete checkpoint, it verifies, the partial
  folder is gone, and a resume from it on a roomier disk finishes.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
import torch
from safetensors.torch import load_file

from launch_utils import ROOT, env
from ldm_fixtures import LDM_DEBUG, build_debug_latents
from ldm_system.train import checkpoint as ckpt

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return build_debug_latents(tmp_path_factory.mktemp("fault-data"))


def _cmd(latents, out, steps, *extra):
    return [sys.executable, "-m", "ldm_system.cli", "train", "--config", str(LDM_DEBUG),
            "--set", f"data.shards={latents}", "--set", f"train.out_dir={out}", "--set", f"train.steps={steps}",
            "--set", "train.checkpoint.every=1", "--set", "train.checkpoint.keep_last=2", "--set", "data.batch_size=4",
            "--set", "preview.num_images=2", "--set", "preview.steps=2", "--resume", "latest", *extra]


def _final(out, step, name):
    return load_file(str(out / "checkpoints" / f"step_{step:08d}" / "weights" / name))


def test_sigkill_at_20_random_moments_then_resume_matches_uninterrupted(latents, tmp_path):
    steps, e = 12, env()
    full = tmp_path / "full"
    t0 = time.time()
    subprocess.run(_cmd(latents, full, steps), env=e, cwd=ROOT, check=True, capture_output=True, timeout=600)
    duration = time.time() - t0

    rng = random.Random(20)
    killed = tmp_path / "killed"
    kills = 0
    for _ in range(20):
        proc = subprocess.Popen(_cmd(latents, killed, steps), env=e, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        # from start-up (imports, loading) to the last checkpoint of a whole run
        time.sleep(rng.uniform(0.2, duration))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        latest = ckpt.resolve("latest", killed, log=lambda _: None)
        if latest is not None:
            ckpt.verify(latest)  # whatever was killed, the newest complete checkpoint is intact
    assert kills >= 15, f"only {kills} of 20 runs were still running when the signal came"
    subprocess.run(_cmd(latents, killed, steps), env=e, cwd=ROOT, check=True, capture_output=True, timeout=600)
    for name in ("unet.safetensors", "unet.ema.safetensors"):
        a, b = _final(full, steps, name), _final(killed, steps, name)
        assert set(a) == set(b)
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k} differs after {kills} kills and resumes"


def test_disk_full_during_a_checkpoint_keeps_latest(latents, tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) for a size-limited tmpfs")
    e = env()
    probe = tmp_path / "probe"  # how big is one checkpoint of this model?
    subprocess.run(_cmd(latents, probe, 1), env=e, cwd=ROOT, check=True, capture_output=True, timeout=600)
    one = sum(f.stat().st_size for f in (probe / "checkpoints" / "step_00000001").rglob("*") if f.is_file())

    disk = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    disk.mkdir()
    size_kb = int(1.6 * one / 1024) + 256  # one checkpoint and the run's logs fit, a second does not
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        out = disk / "run"
        run = subprocess.run(_cmd(latents, out, 6), env=e, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert run.returncode != 0, "the run should fail when the disk is full"
        assert "No space left on device" in run.stderr or "free" in run.stderr, run.stderr[-2000:]
        root = out / "checkpoints"
        latest = ckpt.resolve("latest", out, log=lambda _: None)
        assert latest is not None and latest.name == "step_00000001"
        assert (root / "latest").read_text().strip() == "step_00000001"
        ckpt.verify(latest)
        assert not list(root.glob("*.tmp")), "the partial checkpoint was left behind"
        roomy = tmp_path / "roomy"
        shutil.copytree(out, roomy)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    subprocess.run(_cmd(latents, roomy, 3), env=e, cwd=ROOT, check=True, capture_output=True, timeout=600)
    assert ckpt.resolve("latest", roomy, log=lambda _: None).name == "step_00000003"

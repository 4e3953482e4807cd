"""Resuming on another number of processes: a 1-process ZeRO-3 checkpoint continues on 2 processes.

ZeRO shards, per-rank RNG and data positions do not map onto another world size, so the engine
loads the checkpoint's consolidated weights before DeepSpeed partitions the model, cuts the EMA into
each rank's shards, and says so in the log. With no step left to train, the checkpoint the resumed
run writes must hold exactly the weights and EMA it was given.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from launch_utils import accelerate
from ldm_fixtures import LDM_DEBUG, build_debug_latents

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return build_debug_latents(tmp_path_factory.mktemp("resize-data"))


def test_one_process_checkpoint_resumes_under_zero3_on_two(latents, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--config", str(LDM_DEBUG), "--set", f"data.shards={latents}", "--set", f"train.out_dir={out}",
            "--set", "data.batch_size=4", "--set", "preview.num_images=2", "--set", "preview.steps=2",
            "--set", "train.checkpoint.every=0"]
    accelerate(["-m", "ldm_system.cli", *args, "--set", "train.steps=4"], mode="zero3", procs=1)
    before = out / "checkpoints" / "step_00000004" / "weights"
    saved = {n: load_file(str(before / n)) for n in ("unet.safetensors", "unet.ema.safetensors")}

    run = accelerate(["-m", "ldm_system.cli", *args, "--set", "train.steps=4", "--resume", "latest"], mode="zero3")
    assert "world size changed from 1 to 2" in run.stdout + run.stderr
    after = out / "checkpoints" / "step_00000004" / "weights"
    for name, want in saved.items():
        got = load_file(str(after / name))
        assert set(got) == set(want)
        for k in want:
            assert torch.equal(got[k], want[k]), f"{name}:{k} changed on the way through ZeRO-3 shards"

    accelerate(["-m", "ldm_system.cli", *args, "--set", "train.steps=6", "--resume", "latest"], mode="zero3")
    assert (out / "checkpoints" / "step_00000006" / "weights" / "unet.safetensors").exists()

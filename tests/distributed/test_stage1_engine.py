"""Stage 1 through the engine on real Fashion-MNIST: the discriminator trains only after
`disc_start`, and a 2-process DDP run resumes from its checkpoint."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from launch_utils import accelerate
from ldm_fixtures import AE_DEBUG
from ldm_system.config import load_config
from ldm_system.data.pack import pack
from ldm_system.train.runs import AERunConfig, run_autoencoder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    out = tmp_path_factory.mktemp("s1") / "images"
    pack("builtin:fashion-mnist", out, image_size=32, split="test", limit=128, shard_size=32)
    return out


def _disc(run, step):
    return load_file(str(run / "checkpoints" / f"step_{step:08d}" / "weights" / "disc.safetensors"))


def test_discriminator_trains_only_after_disc_start(images, tmp_path):
    run = tmp_path / "run"
    cfg = load_config(AERunConfig, AE_DEBUG, [f"data.shards={images}", f"train.out_dir={run}", "train.steps=6",
                                              "train.checkpoint.every=1", "train.checkpoint.keep_last=0", "loss.disc_start=3",
                                              "scale_batches=1"])
    run_autoencoder(cfg)
    d1, d2, d3, d4 = (_disc(run, s) for s in (1, 2, 3, 4))
    for k in d1:
        assert torch.equal(d1[k], d2[k]) and torch.equal(d2[k], d3[k]), f"{k} moved before disc_start"
    assert any(not torch.equal(d3[k], d4[k]) for k in d3), "the discriminator did not train after disc_start"
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert "loss/disc" not in lines[0] and "loss/disc" in lines[-1]


@pytest.mark.distributed
def test_stage1_two_process_ddp_with_resume(images, tmp_path):
    run = tmp_path / "ddp"
    args = ["-m", "ldm_system.cli", "train-ae", "--config", str(AE_DEBUG), "--set", f"data.shards={images}",
            "--set", f"train.out_dir={run}", "--set", "train.checkpoint.every=2", "--set", "scale_batches=1",
            "--set", "train.log.every=1"]
    accelerate([*args, "--set", "train.steps=4"], mode="ddp")
    accelerate([*args, "--set", "train.steps=6", "--resume", "latest"], mode="ddp")
    meta = json.loads((run / "checkpoints" / "step_00000006" / "trainer.json").read_text())
    assert meta["step"] == 6 and meta["world_size"] == 2
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (run / "autoencoder" / "autoencoder.json").exists()

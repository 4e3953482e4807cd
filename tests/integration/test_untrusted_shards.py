"""Training from a downloaded shard folder that holds `pipe:touch PWNED;.tar` never runs the command
(issue 11, part 1): the real `ldm train-baseline gan`, from `.` and from the folder's path, a few steps.

The loader-level check of the same is in tests/unit/test_data_shard_names.py (default suite); this one
runs the whole trainer (~15 s with accelerate's start-up), so it is slow-marked.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
MARKER = "PWNED"
HOSTILE = f"pipe:touch {MARKER};.tar"


@pytest.mark.slow
@pytest.mark.parametrize("spec", [".", "folder"])
def test_training_never_runs_a_shard_name(tmp_path: Path, spec: str) -> None:
    from ldm_system.data.pack import pack

    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        Image.fromarray(np.full((32, 32), 30 * i, np.uint8)).save(src / f"{i}.png")
    data = tmp_path / "data"
    pack(str(src), data, shard_size=4, image_size=32, channels=1)
    (data / "manifest.json").unlink()  # a folder of *.tar: its listing is what gets read
    (data / HOSTILE).write_bytes(b"")
    shards = "." if spec == "." else str(data)
    overrides = [f"data.shards={shards}", "model.num_classes=0", f"train.out_dir={tmp_path / 'run'}", "train.steps=2",
                 "preview.num_images=4", "preview.bn_batches=1", "bn_batches=1"]
    cmd = [sys.executable, "-m", "ldm_system.cli", "train-baseline", "gan", "--config",
           str(ROOT / "configs" / "baselines" / "gan-debug.yaml")]
    for o in overrides:
        cmd += ["--set", o]
    result = subprocess.run(cmd, cwd=data, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "damaged shard" in result.stderr and HOSTILE in result.stderr  # read as a file, and skipped
    assert (tmp_path / "run" / "model").is_dir()
    assert not (data / MARKER).exists() and not (tmp_path / MARKER).exists()

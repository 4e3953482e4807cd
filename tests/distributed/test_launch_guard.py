"""A GPU launch file on a machine without CUDA: accelerate would start unsynchronised copies that
all write the same files; the engine refuses in one line instead."""
from __future__ import annotations

import subprocess

import pytest
import torch

from launch_utils import BIN, ROOT, env, free_port

pytestmark = pytest.mark.distributed


@pytest.mark.skipif(torch.cuda.is_available(), reason="the file's DDP runs for real where there is CUDA")
def test_a_multi_gpu_launch_file_without_cuda_is_refused_not_run_unsynchronised(tmp_path):
    e = env()
    e.pop("ACCELERATE_USE_CPU", None)
    cmd = [str(BIN / "accelerate"), "launch", "--num_processes", "2", "--main_process_port", str(free_port()),
           "--config_file", "launch/accelerate/single_node.yaml", "tests/distributed/toy_run.py", str(tmp_path / "run"), "2"]
    out = subprocess.run(cmd, env=e, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "launched 2 processes but accelerate runs them as unsynchronised copies" in out.stderr
    assert not (tmp_path / "run" / "final.pt").exists()

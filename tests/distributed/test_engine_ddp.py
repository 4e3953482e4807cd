"""1 process vs 2 processes (DDP over gloo) with the same global batch.

The toy stream gives rank r rows [r·b, (r+1)·b) of the same global batch, and DDP averages the
two half-batch gradients, which equals the full-batch gradient up to float summation order. So the
loss trajectories (logged as the mean over ranks) and the final weights must agree to ~1e-5; the
only difference is the order of fp32 additions in the all-reduce.
"""
from __future__ import annotations

import json

import pytest
import torch

from launch_utils import accelerate, python

pytestmark = pytest.mark.distributed


def _losses(run):
    return [json.loads(l)["loss/net"] for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_ddp_two_ranks_matches_one(tmp_path):
    python(["tests/distributed/toy_run.py", str(tmp_path / "one"), "20"])
    accelerate(["tests/distributed/toy_run.py", str(tmp_path / "two"), "20"], mode="ddp", procs=2)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 20
    assert sum(one[-4:]) < sum(one[:4])  # it trains
    for a, b in zip(one, two):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    w1 = torch.load(tmp_path / "one" / "final.pt", weights_only=True)["state"]
    w2 = torch.load(tmp_path / "two" / "final.pt", weights_only=True)["state"]
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5)

"""benchmarks/scaling_memory.py: the per-GPU accounting against a hand count, and the report it writes."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def sm():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("scaling_memory")
    finally:
        sys.path.remove(str(BENCH))


def tiny_meta_model() -> nn.Module:
    with torch.device("meta"):
        a, b = nn.Linear(3, 4), nn.Linear(4, 3)
        model = nn.Sequential(a, nn.ReLU(), b, nn.Linear(3, 4))
        model[3].weight = a.weight  # tied: one tensor, counted once
    return model


def test_param_count_on_meta(sm):
    model = tiny_meta_model()
    assert next(model.parameters()).device.type == "meta"
    # a: 3*4 + 4, b: 4*3 + 3, last: tied weight + own bias 4
    assert sm.count_params(model) == (16 + 15 + 4, 16)


def test_accounting_matches_hand_count(sm):
    psi, n = 1000, 8
    # bf16 weights 2Ψ, bf16 grads 2Ψ, fp32 master + m + v 12Ψ, fp32 EMA 4Ψ; DDP keeps fp32 weights (4+4+8).
    want = {
        "ddp": dict(weights=4000, grads=4000, optim=8000, ema=4000, step_extra=4000),
        "zero1": dict(weights=2000, grads=2000, optim=1500, ema=4000, step_extra=500),
        "zero2": dict(weights=2000, grads=250, optim=1500, ema=4000, step_extra=500),
        "zero3": dict(weights=250, grads=250, optim=1500, ema=500, step_extra=500),
    }
    for stage, parts in want.items():
        got = sm.model_state_bytes(psi, n, stage)
        for k, v in parts.items():
            assert got[k] == pytest.approx(v), (stage, k)
        assert got["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "step_extra"))
    assert sm.model_state_bytes(psi, n, "zero3", ema=False)["total"] == pytest.approx(2000)
    with pytest.raises(ValueError, match="unknown stage"):
        sm.model_state_bytes(psi, n, "zero4")


def test_zero2_agrees_with_deepspeed_and_its_printed_table(sm):
    size = sm.ModelSize("m", params=800_000_000, largest_layer=30_000_000)
    for n in (8, 256):
        ours = sm.model_state_bytes(size.params, n, "zero2")
        ds = sm.deepspeed_estimate(size, n, "zero2")
        # DeepSpeed: 2Ψ + 18Ψ/N = ours without EMA, plus the fp32 gradient partition of the step.
        assert ds == pytest.approx(ours["total"] - ours["ema"] + ours["step_extra"], abs=1)
    for stage in ("zero2", "zero3"):
        assert sm.printed_estimate(size, 64, stage) == pytest.approx(sm.deepspeed_estimate(size, 64, stage) / 2**30, abs=0.006)
    assert sm.deepspeed_estimate(size, 8, "zero1") is None


def test_report_records_every_table(sm):
    total, largest = sm.count_params(tiny_meta_model())
    sizes = [sm.ModelSize("tiny", total, largest)]
    res = sm._results.Results("scaling_memory", {})
    text = sm.report(sizes, {"png": 100_000.0, "jpg": 20_000.0, "count": 1}, res)
    for stage in sm.STAGES:
        assert f"| tiny  | {stage}" in text
    assert "MB/s per node" in text and "forward GFLOP" not in text  # no FLOPs counted for this one
    # a shard sample: the .npy (128-byte header + float32 data) and a .cls, each a 512-byte tar header + padded data
    assert sm.tar_member(sm.npy_bytes((4, 32, 32))) == 512 + 16896
    # what docs/scaling.md shows comes from these tables (benchmarks/render_readme.py)
    assert [t.key for t in res.tables] == ["models", "breakdown", "per-gpu", "read-rate"]

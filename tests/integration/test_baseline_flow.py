"""The flow baseline end to end on real Fashion-MNIST shards: the debug config through `run_flow`
(checkpoints, model folder), `resume="latest"` continuing to more steps, `load_flow` sampling
deterministically per seed and scoring bits/dim, and a folder of another family refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ldm_system.baselines.common import save_model_folder
from ldm_system.baselines.flow import FlowRunConfig, Glow, load_flow, run_flow
from ldm_system.baselines.flow_layers import ActNorm
from ldm_system.config import load_config
from ldm_system.eval.protocols import LikelihoodModel

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "configs" / "baselines" / "flow-debug.yaml"


def _cfg(shards: Path, out: Path, *extra: str) -> FlowRunConfig:
    return load_config(FlowRunConfig, DEBUG, [f"data.shards={shards}", f"train.out_dir={out}", *extra])


def _step(run: Path) -> int:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return json.loads((run / "checkpoints" / latest / "trainer.json").read_text())["step"]


def test_train_resume_load_sample(shards, tmp_path):
    run = tmp_path / "flow"
    folder = run_flow(_cfg(shards, run))
    assert folder == run / "model" and (folder / "model.safetensors").exists()
    assert _step(run) == 4 and (run / "checkpoints" / "step_00000002").is_dir()
    meta = json.loads((folder / "baseline.json").read_text())
    assert meta["family"] == "flow" and meta["ema"] is True and meta["step"] == 4 and len(meta["classes"]) == 10
    assert (run / "previews" / "preview_00000004.png").exists()

    run_flow(_cfg(shards, run, "train.steps=6"), resume="latest")
    assert _step(run) == 6 and json.loads((folder / "baseline.json").read_text())["step"] == 6
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in lines if "bits_per_dim" in r][-1] == 6

    model = load_flow(run)  # the run folder works as well as run/model
    assert isinstance(model, Glow) and isinstance(model, LikelihoodModel)
    assert model.image_shape == (1, 32, 32) and not model.training
    assert all(int(m.initialized) == 1 for m in model.modules() if isinstance(m, ActNorm))
    a = model.sample(3, seed=1)
    assert a.shape == (3, 1, 32, 32) and float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    assert torch.equal(a, model.sample(3, seed=1)) and not torch.equal(a, model.sample(3, seed=2))

    from ldm_system.data.stream import first_images

    images = first_images(str(shards), 8)
    bpd = model.bits_per_dim(images)
    assert bpd.shape == (8,) and torch.isfinite(bpd).all()
    assert 1.0 < float(bpd.mean()) < 12.0  # 6 debug steps: far from trained, but a sane likelihood
    assert torch.equal(bpd, model.bits_per_dim(images))  # fixed, seeded dequantisation noise


def test_other_family_folder_is_refused(tmp_path):
    save_model_folder(tmp_path / "model", "gan", {"z_dim": 8}, torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="'gan' model, not a 'flow'"):
        load_flow(tmp_path)


def test_model_must_fit_the_data(shards, tmp_path):
    with pytest.raises(ValueError, match="model.image_size"):
        run_flow(_cfg(shards, tmp_path / "x", "model.image_size=16"))

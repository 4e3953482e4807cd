"""The autoregressive baseline end to end on real Fashion-MNIST shards, through the one engine:
debug config → checkpoints + model folder → resume to more steps → load → sample / bits/dim."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import kernels
from ldm_system.baselines.ar_model import ARModelConfig, ImageTransformer
from ldm_system.baselines.autoregressive import ARRunConfig, load_ar, run_ar
from ldm_system.baselines.common import save_model_folder
from ldm_system.config import load_config
from ldm_system.data.stream import first_images
from ldm_system.eval.protocols import LikelihoodModel

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "configs" / "baselines" / "ar-debug.yaml"
FMNIST = ROOT / "configs" / "baselines" / "ar-fmnist.yaml"


@pytest.fixture(autouse=True)
def _sdpa_backend():
    previous = kernels.set_backend("sdpa")  # conftest's TRITON_INTERPRET=1 would make "auto" interpret
    yield
    kernels.set_backend(previous)


def _cfg(shards: Path, out: Path, steps: int) -> ARRunConfig:
    return load_config(ARRunConfig, DEBUG, [f"data.shards={shards}", f"train.out_dir={out}", f"train.steps={steps}"])


def test_train_resume_load_sample_and_bits_per_dim(shards, tmp_path):
    out = tmp_path / "run"
    folder = run_ar(_cfg(shards, out, steps=4))
    assert folder == out / "model"
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000004"]
    meta = json.loads((folder / "baseline.json").read_text())
    assert meta["family"] == "ar" and meta["step"] == 4 and meta["ema"] is True and len(meta["classes"]) == 10
    assert list((out / "previews").glob("*.png"))
    first = load_ar(folder)

    run_ar(_cfg(shards, out, steps=6), resume="latest")  # continues at step 4
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]
    assert json.loads((folder / "baseline.json").read_text())["step"] == 6

    model = load_ar(out)  # the run folder works as well as the model folder
    assert isinstance(model, LikelihoodModel) and model.image_shape == (1, 32, 32)
    assert model.classes == meta["classes"] and not model.training
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), first.state_dict().values()))
    a = model.sample(2, seed=3)
    assert a.shape == (2, 1, 32, 32) and a.dtype == torch.float32 and -1 <= a.min() and a.max() <= 1
    assert torch.equal(a, model.sample(2, seed=3))
    assert not torch.equal(a, model.sample(2, seed=4))

    test_images = first_images(str(shards), 4)
    bpd = model.bits_per_dim(test_images)
    assert bpd.shape == (4,) and torch.isfinite(bpd).all()
    assert (bpd < 8.0).all()  # six steps already learn the pixel histogram (many black pixels) below uniform


def test_wrong_family_and_mismatched_data_are_refused(shards, tmp_path):
    cfg = ARModelConfig(channels=1, image_size=4, width=16, depth=1, heads=2)
    save_model_folder(tmp_path / "flow" / "model", "flow", cfg, ImageTransformer(cfg))
    with pytest.raises(ValueError, match="holds a 'flow' model, not a 'ar' one"):
        load_ar(tmp_path / "flow")
    with pytest.raises(FileNotFoundError, match="not a baseline model folder"):
        load_ar(tmp_path)
    with pytest.raises(ValueError, match="model.image_size=16"):
        run_ar(load_config(ARRunConfig, DEBUG, [f"data.shards={shards}", f"train.out_dir={tmp_path / 'x'}",
                                                "model.image_size=16"]))


def test_real_config_loads_and_keeps_full_resolution():
    cfg = load_config(ARRunConfig, FMNIST)
    assert cfg.model.image_shape == (1, 32, 32) and cfg.model.seq_len == 1024
    assert cfg.train.max_minutes > 0 and cfg.preview.num_images <= 4

"""The GAN baseline end to end on real Fashion-MNIST shards, through the one engine: debug config →
checkpoints + model folder → resume to more steps (bit-exact with an uninterrupted run) → load →
seeded sampling; wrong family and mismatched data refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ldm_system.baselines.common import save_model_folder
from ldm_system.baselines.gan import GANRunConfig, load_gan, run_gan
from ldm_system.baselines.gan_models import GANModelConfig, Generator
from ldm_system.config import load_config
from ldm_system.eval.protocols import GenerativeModel

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "configs" / "baselines" / "gan-debug.yaml"
FMNIST = ROOT / "configs" / "baselines" / "gan-fmnist.yaml"


def _cfg(shards: Path, out: Path, steps: int, *extra: str) -> GANRunConfig:
    return load_config(GANRunConfig, DEBUG,
                       [f"data.shards={shards}", f"train.out_dir={out}", f"train.steps={steps}", *extra])


def _gen_weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / f"step_{step:08d}" / "weights" / "gen.safetensors"))


def test_train_resume_load_and_sample(shards, tmp_path):
    out = tmp_path / "run"
    folder = run_gan(_cfg(shards, out, steps=2))
    assert folder == out / "model"
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000002"]
    meta = json.loads((folder / "baseline.json").read_text())
    assert meta["family"] == "gan" and meta["step"] == 2 and meta["ema"] is True and len(meta["classes"]) == 10
    assert list((out / "previews").glob("*.png"))
    first = load_gan(folder)

    run_gan(_cfg(shards, out, steps=4), resume="latest")  # continues at step 2
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [2, 4]
    assert {"loss/disc", "loss/gen", "disc/logits_real", "gen/loss"} <= set(logged[-1])
    assert json.loads((folder / "baseline.json").read_text())["step"] == 4

    # one uninterrupted 4-step run lands on exactly the same weights (RNG + stream position resumed)
    straight = tmp_path / "straight"
    run_gan(_cfg(shards, straight, steps=4))
    a, b = _gen_weights(out, 4), _gen_weights(straight, 4)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)

    model = load_gan(out)  # the run folder works as well as the model folder
    assert isinstance(model, GenerativeModel) and model.image_shape == (1, 32, 32)
    assert model.classes == meta["classes"] and not model.gen.training
    assert any(not torch.equal(x, y) for x, y in zip(model.gen.state_dict().values(), first.gen.state_dict().values()))
    s = model.sample(12, seed=3)
    assert s.shape == (12, 1, 32, 32) and s.dtype == torch.float32 and -1 <= s.min() and s.max() <= 1
    assert torch.equal(s, model.sample(12, seed=3))
    assert torch.allclose(s, model.sample(12, seed=3, batch_size=5), atol=1e-5)  # chunks: same images
    assert not torch.allclose(s, model.sample(12, seed=4), atol=1e-2)
    three = model.sample(3, seed=3)
    assert torch.equal(model.sample(3, seed=3, classes=[0, 1, 2]), three)  # default labels cycle 0..K-1
    assert not torch.allclose(model.sample(3, seed=3, classes=7), three, atol=1e-2)


def test_unconditional_run(shards, tmp_path):
    folder = run_gan(_cfg(shards, tmp_path / "u", 1, "model.num_classes=0", "loss.kind=non_saturating",
                          "train.ema.module=''", "train.checkpoint.every=0"))
    meta = json.loads((folder / "baseline.json").read_text())
    assert meta["ema"] is False and meta["classes"] == []
    x = load_gan(folder).sample(3, seed=0)
    assert x.shape == (3, 1, 32, 32) and torch.isfinite(x).all()


def test_wrong_family_and_mismatched_data_are_refused(shards, tmp_path):
    cfg = GANModelConfig(z_dim=4, gen_channels=4, disc_channels=4)
    save_model_folder(tmp_path / "flow" / "model", "flow", cfg, Generator(cfg))
    with pytest.raises(ValueError, match="holds a 'flow' model, not a 'gan' one"):
        load_gan(tmp_path / "flow")
    with pytest.raises(FileNotFoundError, match="not a baseline model folder"):
        load_gan(tmp_path)
    with pytest.raises(ValueError, match="model.channels=3 but the data has 1"):
        run_gan(_cfg(shards, tmp_path / "x", 1, "model.channels=3"))
    with pytest.raises(ValueError, match="model.num_classes=5 but the data has 10"):
        run_gan(_cfg(shards, tmp_path / "x", 1, "model.num_classes=5"))


def test_real_config_loads():
    cfg = load_config(GANRunConfig, FMNIST)
    assert cfg.model.channels == 1 and cfg.model.image_size == 32 and cfg.model.num_classes == 10
    assert cfg.loss.kind == "hinge" and cfg.train.ema.module == "gen" and cfg.train.max_minutes > 0
    assert cfg.data.batch_size == 64 and cfg.preview.num_images == 64

"""The VQ-token autoregressive baseline: a transformer over a VQ autoencoder's code grid, trained by
the one engine on real Fashion-MNIST shards, resumed, loaded by the report, sampled through the decoder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import kernels
from autoencoders.config import AutoencoderConfig, QuantizerConfig
from autoencoders.factory import build_autoencoder
from autoencoders.io import save_autoencoder
from ldm_system.baselines.vq_ar import VQARRunConfig, VQCodes, load_vq_ar, run_vq_ar
from ldm_system.config import load_config
from ldm_system.eval.protocols import ClassConditionalModel, LikelihoodModel

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "configs" / "baselines" / "vq-ar-debug.yaml"


@pytest.fixture(autouse=True)
def _sdpa_backend():
    previous = kernels.set_backend("sdpa")
    yield
    kernels.set_backend(previous)


def _autoencoder(path: Path, kind: str = "vq") -> Path:
    cfg = AutoencoderConfig(kind=kind, in_channels=1, channels=(8, 16, 16), f=4, latent_channels=3, layers_per_block=1,
                            norm_groups=8, quantizer=QuantizerConfig(codebook_size=32))
    torch.manual_seed(0)
    save_autoencoder(build_autoencoder(cfg), cfg, 1.0, path)
    return path


def _cfg(shards, ae, out, steps, *extra) -> VQARRunConfig:
    return load_config(VQARRunConfig, DEBUG, [f"data.shards={shards}", f"autoencoder={ae}", f"train.out_dir={out}",
                                              f"train.steps={steps}", *extra])


def test_train_resume_load_and_sample_through_the_decoder(shards, tmp_path):
    ae = _autoencoder(tmp_path / "vq")
    folder = run_vq_ar(_cfg(shards, ae, tmp_path / "run", 4))
    meta = json.loads((folder / "baseline.json").read_text())
    assert meta["family"] == "vq-ar" and meta["autoencoder"] == str(ae.resolve())
    assert (meta["model"]["image_size"], meta["model"]["channels"], meta["model"]["vocab"]) == (8, 1, 32)  # 8x8 codes
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    bits = [r["bits_per_token"] for r in logged if "bits_per_token" in r]
    assert bits and all(0 < b < 8 for b in bits)  # a fresh model is uniform over 32 codes: 5 bits/token
    run_vq_ar(_cfg(shards, ae, tmp_path / "run", 6), resume="latest")
    assert json.loads((tmp_path / "run" / "model" / "baseline.json").read_text())["step"] == 6

    from ldm_system.eval.report import load_generator

    family, gen = load_generator(tmp_path / "run")
    assert family == "vq-ar" and gen.image_shape == (1, 32, 32)
    assert isinstance(gen, ClassConditionalModel) and not isinstance(gen, LikelihoodModel)
    a = gen.sample(4, seed=1)
    assert a.shape == (4, 1, 32, 32) and torch.isfinite(a).all() and a.abs().max() <= 1
    assert torch.equal(a, load_vq_ar(tmp_path / "run").sample(4, seed=1))
    # a sample is a code grid decoded: encoding it again gives codes the decoder maps to the same image
    codes = VQCodes(ae)
    tokens = codes.encode(a)
    assert tokens.shape == (4, 64) and int(tokens.max()) < 32


def test_bad_inputs_are_clear_errors(shards, tmp_path):
    with pytest.raises(ValueError, match="needs `autoencoder:`"):
        run_vq_ar(_cfg(shards, "''", tmp_path / "a", 1))
    kl = _autoencoder(tmp_path / "kl", kind="kl")
    with pytest.raises(ValueError, match="needs a VQ autoencoder.*'kl'"):
        run_vq_ar(_cfg(shards, kl, tmp_path / "b", 1))
    vq = _autoencoder(tmp_path / "vq")
    with pytest.raises(ValueError, match="model.vocab=100 but the autoencoder gives 32"):
        run_vq_ar(_cfg(shards, vq, tmp_path / "c", 1, "model.vocab=100"))
    run_vq_ar(_cfg(shards, vq, tmp_path / "d", 1))
    import shutil

    shutil.rmtree(vq)
    with pytest.raises(FileNotFoundError, match="is gone"):
        load_vq_ar(tmp_path / "d")

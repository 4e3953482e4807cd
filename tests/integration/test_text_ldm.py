"""Text-conditioned stage 2 end to end on real Fashion-MNIST latents (captions = class names) with
configs/ldm/fmnist-text-debug.yaml and a tiny random CLIP: train through `run_ldm`, checkpoint,
resume exactly, export with the text encoder, sample with prompts and classifier-free guidance."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ldm_fixtures import ROOT, build_debug_latents
from ldm_system.config import load_config
from ldm_system.models.text import TextEncoder, save_random_text_encoder
from ldm_system.train.runs import LDMRunConfig, run_ldm

TEXT_DEBUG = ROOT / "configs" / "ldm" / "fmnist-text-debug.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-e2e")
    clip = save_random_text_encoder(root / "clip", hidden_size=32, max_length=16)  # = cross_attention_dim
    return root, build_debug_latents(root), clip


def _cfg(data, out, *extra):
    root, lat, clip = data
    return load_config(LDMRunConfig, TEXT_DEBUG, [
        f"data.shards={lat}", f"train.out_dir={root / out}", f"text.path={clip}", "data.batch_size=4",
        "train.ckpt_every=2", "preview.num_images=2", "preview.steps=2", "diffusion.cond_drop_prob=0.5", *extra])


@pytest.fixture(scope="module")
def trained(data):
    tr = run_ldm(_cfg(data, "ldm", "train.steps=4"))
    assert tr.step == 4 and tr.task.text is not None
    return data[0] / "ldm"


@pytest.fixture(scope="module")
def exported(data, trained):
    from ldm_system.serving.export import export_checkpoint

    return export_checkpoint(trained, data[0] / "model")


def test_checkpoint_records_the_text_encoder(data, trained):
    meta = json.loads((trained / "checkpoints" / "step_00000004" / "trainer.json").read_text())["task_metadata"]
    assert meta["text_encoder"] == {"source": str(data[2].resolve()), "max_length": 16, "hidden_size": 32}
    assert meta["classes"][7] == "Sneaker"
    assert (trained / "previews" / "preview_00000004.png").exists()  # the text preview path ran


def test_resume_is_exact_with_caption_dropout(data, trained):
    """Caption dropout draws from the global RNG, which checkpoints restore: resuming at step 2 ends
    with the uninterrupted run's weights."""
    import shutil

    resumed = data[0] / "resumed"
    shutil.copytree(trained / "checkpoints" / "step_00000002", resumed / "checkpoints" / "step_00000002")
    (resumed / "checkpoints" / "latest").write_text("step_00000002")
    tr = run_ldm(_cfg(data, "resumed", "train.steps=4"), resume="latest")
    assert tr.step == 4
    a = load_file(str(trained / "checkpoints" / "step_00000004" / "weights" / "unet.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step_00000004" / "weights" / "unet.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


def test_export_holds_the_text_encoder_and_samples_with_prompts(data, exported, monkeypatch):
    from diffusers import UNet2DConditionModel

    from ldm_system.serving.pipeline import LDMPipeline

    meta = json.loads((exported / "ldm.json").read_text())
    assert meta["text_encoder"]["max_length"] == 16 and meta["text_encoder"]["hidden_size"] == 32
    assert (exported / "text_encoder" / "config.json").exists() and (exported / "tokenizer").is_dir()
    assert UNet2DConditionModel.from_pretrained(str(exported / "unet")).config.cross_attention_dim == 32

    pipe = LDMPipeline.from_pretrained(exported)
    original = TextEncoder.from_pretrained(data[2], max_length=16)
    torch.testing.assert_close(pipe.text.encode(["Sneaker", ""]), original.encode(["Sneaker", ""]))  # same weights

    rows = []
    model_fn = pipe.model_fn
    monkeypatch.setattr(pipe, "model_fn", lambda x, t, c: rows.append(x.shape[0]) or model_fn(x, t, c))
    images = pipe.sample(2, prompts=["Sneaker", "Bag"], guidance=3, steps=3)
    assert images.shape == (2, 1, 32, 32) and images.abs().max() <= 1
    assert rows == [4, 4, 4]  # prompt + empty-prompt null in one batched call per step
    again = pipe.sample(2, prompts=["Sneaker", "Bag"], guidance=3, steps=3)
    torch.testing.assert_close(images, again)  # seeded
    other = pipe.sample(2, prompts=["Bag", "Sneaker"], guidance=3, steps=3)
    assert not torch.allclose(images, other)  # the prompt reaches the UNet


def test_export_without_the_text_encoder_fails_clearly(data, trained, tmp_path):
    import shutil

    from ldm_system.serving.export import export_checkpoint

    root, lat, clip = data
    moved = tmp_path / "clip-copy"
    shutil.copytree(clip, moved)
    run = tmp_path / "run"
    run_ldm(load_config(LDMRunConfig, TEXT_DEBUG, [
        f"data.shards={lat}", f"train.out_dir={run}", f"text.path={moved}", "data.batch_size=4",
        "train.steps=1", "train.ckpt_every=0", "preview.num_images=1", "preview.steps=1"]))
    shutil.rmtree(moved)
    with pytest.raises(FileNotFoundError, match="text encoder .*clip-copy is gone"):
        export_checkpoint(run, tmp_path / "model")


def test_cross_attention_mismatch_is_refused_before_training(data):
    with pytest.raises(ValueError, match=r"unet.cross_attention_dim=64 but the text encoder .* hidden size 32"):
        run_ldm(_cfg(data, "bad", "train.steps=1", "unet.cross_attention_dim=64"))


def test_missing_text_model_is_refused(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="text model path .*no-such-clip.* does not exist"):
        run_ldm(_cfg(data, "bad2", "train.steps=1", f"text.path={tmp_path / 'no-such-clip'}"))

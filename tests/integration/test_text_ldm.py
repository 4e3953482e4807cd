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
        "train.checkpoint.every=2", "preview.num_images=2", "preview.steps=2", "diffusion.cond_drop_prob=0.5", *extra])


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
        "train.steps=1", "train.checkpoint.every=0", "preview.num_images=1", "preview.steps=1"]))
    shutil.rmtree(moved)
    with pytest.raises(FileNotFoundError, match="text encoder .*clip-copy is gone"):
        export_checkpoint(run, tmp_path / "model")


def test_cross_attention_mismatch_is_refused_before_training(data):
    with pytest.raises(ValueError, match=r"unet.cross_attention_dim=64 but the text encoder .* hidden size 32"):
        run_ldm(_cfg(data, "bad", "train.steps=1", "unet.cross_attention_dim=64"))


def test_missing_text_model_is_refused(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="text model path .*no-such-clip.* does not exist"):
        run_ldm(_cfg(data, "bad2", "train.steps=1", f"text.path={tmp_path / 'no-such-clip'}"))


# ---- prompts through inversion, editing, SDEdit and interpolation (mechanics: a 4-step model is near-random)
@pytest.fixture(scope="module")
def text_pipe(exported):
    from ldm_system.serving.pipeline import LDMPipeline

    return LDMPipeline.from_pretrained(exported)


@pytest.fixture(scope="module")
def captioned(text_pipe, tmp_path_factory) -> tuple[torch.Tensor, list[str], list]:
    """Two held-out Fashion-MNIST images as the model sees them (2, 1, 32, 32), their captions (the
    class names, as in training) and their PNG files."""
    from PIL import Image

    from ldm_system.data.sources.fashion_mnist import load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    folder = tmp_path_factory.mktemp("captioned")
    paths = []
    for i in (9000, 9001):
        paths.append(folder / f"fmnist_{i}.png")
        Image.fromarray(images[i]).save(paths[-1])
    return text_pipe.load_images(paths), [text_pipe.classes[int(labels[i])] for i in (9000, 9001)], paths


def test_inversion_with_prompts_round_trips_the_latent(text_pipe, captioned):
    x, captions, _ = captioned
    plain = text_pipe.invert(x, prompts=captions, steps=10)
    refined = text_pipe.invert(x, prompts=captions, steps=10, fixed_point_iters=2)
    # measured (10 steps): latent MSE ≈ 0.13 plain, ≈ 1.5e-3 / 2.2e-3 with 2 fixed-point iterations
    assert max(refined.latent_mse) < 1e-2, refined.latent_mse
    assert max(refined.latent_mse) < min(plain.latent_mse) / 5, (plain.latent_mse, refined.latent_mse)
    assert refined.null_embeddings is None  # only null-text inversion fits them
    other = text_pipe.invert(x, prompts=["Bag", "Bag"], steps=10, fixed_point_iters=2)
    assert float((other.x_T - refined.x_T).abs().mean()) > 1e-3  # the prompt reaches the UNet (measured ≈ 0.06)


def test_null_text_inversion_fits_the_guided_reconstruction(text_pipe, captioned):
    x, captions, _ = captioned
    plain = text_pipe.invert(x, prompts=captions, steps=10, guidance=3.0)
    nulled = text_pipe.invert(x, prompts=captions, steps=10, guidance=3.0, null_optimization=True)
    # measured (10 steps, guidance 3): latent MSE ≈ 0.22 / 0.78 plain vs ≈ 0.042 / 0.081 with null-text (5-10x)
    for p, n in zip(plain.latent_mse, nulled.latent_mse):
        assert n < p / 2.5, (plain.latent_mse, nulled.latent_mse)
    nulls = nulled.null_embeddings
    assert nulls.shape == (10, 2, 16, 32)  # (steps, images, L, D): one null-text per step and image
    assert not torch.allclose(nulls[0], text_pipe.text.null().expand(2, -1, -1))  # fitted, not the empty prompt
    # replaying x_T with the fitted null-texts reproduces the reconstruction; without them it is the plain one
    replay = text_pipe.reconstruct(nulled.x_T, prompts=captions, steps=10, guidance=3.0, null_embeddings=nulls)
    torch.testing.assert_close(replay, nulled.reconstruction, atol=1e-6, rtol=0)
    bare = text_pipe.reconstruct(nulled.x_T, prompts=captions, steps=10, guidance=3.0)
    torch.testing.assert_close(bare, plain.reconstruction, atol=1e-6, rtol=0)


def test_text_edit_sdedit_and_interpolation_use_the_prompts(text_pipe, captioned):
    x, captions, _ = captioned
    img, src = x[:1], captions[0]
    edited = text_pipe.edit(img, source_prompt=src, target_prompt="Bag", steps=8, keep_steps=2)
    assert edited.shape == img.shape
    torch.testing.assert_close(text_pipe.edit(img, source_prompt=src, target_prompt="Bag", steps=8, keep_steps=2),
                               edited, atol=0, rtol=0)  # deterministic
    same = text_pipe.edit(img, source_prompt=src, target_prompt=src, steps=8, keep_steps=2)
    assert float((edited - same).abs().mean()) > 1e-3  # the target prompt changed it (measured ≈ 0.02)
    # keeping every step under the source prompt is the reconstruction
    rec = text_pipe.invert(img, prompts=[src], steps=8).reconstruction
    torch.testing.assert_close(text_pipe.edit(img, source_prompt=src, target_prompt="Bag", steps=8, keep_steps=8),
                               rec, atol=1e-5, rtol=0)

    bag = text_pipe.sdedit(img, strength=0.6, target_prompt="Bag", steps=8, seed=1)
    trouser = text_pipe.sdedit(img, strength=0.6, target_prompt="Trouser", steps=8, seed=1)
    assert bag.shape == img.shape and float((bag - trouser).abs().mean()) > 1e-4  # measured ≈ 5e-3
    torch.testing.assert_close(text_pipe.sdedit(img, strength=0.6, target_prompt=["Bag"], steps=8, seed=1), bag)

    frames = text_pipe.interpolate(x[:1], x[1:], num=4, steps=8, prompts=captions)
    assert frames.shape == (4, 1, 32, 32)
    ends = text_pipe.invert(x, prompts=captions, steps=8).reconstruction
    torch.testing.assert_close(frames[0], ends[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(frames[-1], ends[1], atol=1e-4, rtol=0)
    one = text_pipe.interpolate(x[:1], x[1:], num=2, steps=8, prompts="Bag")  # one prompt for both ends
    assert float((one - frames[[0, -1]]).abs().mean()) > 1e-4


def test_prompt_and_class_misuse_fails_clearly(text_pipe, captioned):
    x = captioned[0][:1]
    with pytest.raises(ValueError, match="this model is text-conditional; pass prompts, not classes"):
        text_pipe.invert(x, classes=["Bag"], steps=2)
    with pytest.raises(ValueError, match="this model is text-conditional; edit with source_prompt/target_prompt"):
        text_pipe.edit(x, source_class="Bag", target_class="Sandal", steps=2)
    with pytest.raises(ValueError, match="a text edit needs target_prompt"):
        text_pipe.edit(x, source_prompt="Bag", steps=2)
    with pytest.raises(ValueError, match="not both"):
        text_pipe.edit(x, target_class="Bag", target_prompt="Bag", steps=2)
    with pytest.raises(ValueError, match="null-condition inversion needs"):
        text_pipe.invert(x, prompts=["Bag"], steps=2, null_optimization=True)  # guidance 1
    with pytest.raises(ValueError, match="null-condition inversion needs"):
        text_pipe.invert(x, steps=2, guidance=3.0, null_optimization=True)  # no prompt
    with pytest.raises(ValueError, match="give a list of 1 prompts"):
        text_pipe.invert(x, prompts="Bag", steps=2)
    with pytest.raises(ValueError, match=r"prompts: give one prompt or one per image \(2\), got 3"):
        text_pipe.interpolate(x, x, num=2, steps=2, prompts=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"null_embeddings must be \(steps=3, 1, 16, 32\)"):
        text_pipe.reconstruct(torch.zeros(1, 3, 8, 8), prompts=["Bag"], steps=3, guidance=3.0,
                              null_embeddings=torch.zeros(2, 1, 16, 32))


def test_cli_with_prompts_writes_null_texts_that_replay(exported, text_pipe, captioned, tmp_path, capsys):
    from ldm_system.cli import main
    from ldm_system.serving.cli import load_noise, replay_inversion

    _, captions, paths = captioned
    out = tmp_path / "inv"
    assert main(["invert", "--model", str(exported), str(paths[0]), "--prompt", captions[0], "--steps", "3",
                 "--guidance", "3", "--null-opt", "--noise-format", "pt", "--out", str(out), "--no-progress"]) == 0
    nulls, meta = load_noise(out / "null_embeddings.pt", "null_embeddings")
    assert nulls.shape == (3, 1, 16, 32) and json.loads(meta["prompts"]) == captions[:1]
    x = text_pipe.load_images(paths[:1])
    local = text_pipe.invert(x, prompts=captions[:1], steps=3, guidance=3.0, null_optimization=True)
    torch.testing.assert_close(nulls, local.null_embeddings)
    torch.testing.assert_close(replay_inversion(text_pipe, out), local.reconstruction, atol=1e-6, rtol=0)

    assert main(["edit", "--model", str(exported), str(paths[0]), "--source-prompt", captions[0],
                 "--target-prompt", "Bag", "--steps", "4", "--out", str(tmp_path / "e"), "--no-progress"]) == 0
    assert (tmp_path / "e" / f"{paths[0].stem}_edit.png").is_file()
    assert main(["edit", "--model", str(exported), str(paths[0]), "--target-prompt", "Bag", "--strength", "0.5",
                 "--steps", "4", "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    assert main(["interpolate", "--model", str(exported), str(paths[0]), str(paths[1]), "--prompt", *captions,
                 "--num", "3", "--steps", "3", "--out", str(tmp_path / "i.png"), "--no-progress"]) == 0
    assert main(["invert", "--model", str(exported), str(paths[0]), "--class", "Bag", "--steps", "2",
                 "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "ldm invert: error: this model is text-conditional; pass prompts, not classes" in capsys.readouterr().err


def test_http_requests_with_prompts(text_pipe, captioned):
    from fastapi.testclient import TestClient

    from ldm_system.serving.image_io import tensor_to_b64png
    from ldm_system.serving.server import ServerLimits, create_app

    x, captions, _ = captioned
    imgs = tensor_to_b64png(x)
    with TestClient(create_app(text_pipe, ServerLimits(max_steps=10, max_batch=4))) as c:
        r = c.post("/invert", json={"images": imgs, "prompts": captions, "steps": 6, "fixed_point_iters": 2})
        assert r.status_code == 200, r.text
        local = text_pipe.invert(x, prompts=captions, steps=6, fixed_point_iters=2)  # PNG round trip is exact
        assert r.json()["latent_mse"] == pytest.approx(local.latent_mse, rel=1e-4)
        r = c.post("/edit", json={"images": imgs[:1], "source_prompt": captions[0], "target_prompt": "Bag",
                                  "steps": 4, "keep_steps": 1})
        assert r.status_code == 200 and r.json()["mode"] == "text", r.text
        r = c.post("/interpolate", json={"images": imgs, "prompts": "Bag", "num": 3, "steps": 3})
        assert r.status_code == 200 and len(r.json()["frames"]) == 3, r.text
        r = c.post("/edit", json={"images": imgs[:1], "target_class": "Bag", "steps": 4})
        assert r.status_code == 422 and r.json()["detail"] == ("this model is text-conditional; edit with "
                                                             "source_prompt/target_prompt, not classes")

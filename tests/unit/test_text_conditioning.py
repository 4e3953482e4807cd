"""Text conditioning wired through the trainer task, the run config and the pipeline, on a tiny random
CLIP and an untrained tiny UNet (the trained end-to-end path is tests/integration/test_text_ldm.py)."""
from __future__ import annotations

import pytest
import torch

from ldm_fixtures import ROOT
from ldm_system.config import ConfigError, load_config
from ldm_system.data.stream_worker import Batch
from ldm_system.diffusion.config import DiffusionConfig
from ldm_system.models.latent import LatentCodec
from ldm_system.models.text import TextEncoder, save_random_text_encoder
from ldm_system.models.unet import Denoiser, UNetConfig
from ldm_system.train.diffusion_task import DiffusionTask, OptimConfig, PreviewConfig
from ldm_system.train.runs import LDMRunConfig, build_text_encoder

TEXT_DEBUG = ROOT / "configs" / "ldm" / "fmnist-text-debug.yaml"
UNET = UNetConfig(sample_size=4, in_channels=3, block_out_channels=(16, 32), attention_levels=(False, True),
                  layers_per_block=1, attention_head_dim=4, norm_num_groups=8, conditioning="text",
                  cross_attention_dim=32)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_random_text_encoder(tmp_path_factory.mktemp("clip"), hidden_size=32, max_length=16)


@pytest.fixture(scope="module")
def enc(clip_dir):
    return TextEncoder.from_pretrained(clip_dir, max_length=16)


def _task(enc, unet=UNET, drop=0.0, **kw):
    return DiffusionTask(unet, DiffusionConfig(cond_drop_prob=drop), OptimConfig(), LatentCodec.identity(), "latent",
                         PreviewConfig(num_images=3, steps=2), text=enc, **kw)


def _batch(n=4):
    return Batch(torch.randn(n, 3, 4, 4), torch.zeros(n, dtype=torch.long), ["Sneaker", "Bag", "Coat", "Sandal"][:n],
                 [str(i) for i in range(n)])


def test_task_condition_encodes_captions_and_drops_to_the_null(enc):
    cond = _task(enc).condition(_batch())
    assert cond.shape == (4, 16, 32)
    torch.testing.assert_close(cond, enc.encode(["Sneaker", "Bag", "Coat", "Sandal"]))
    dropped = _task(enc, drop=1.0).condition(_batch())
    torch.testing.assert_close(dropped, enc.null().expand(4, -1, -1))


def test_task_trains_and_previews_with_text(enc):
    task = _task(enc, info={"classes": ["Sneaker", "Bag"]})
    modules = task.build()
    (name, loss), = list(task.losses(modules, _batch(), step=0))
    loss.backward()
    assert name == "unet" and torch.isfinite(loss)
    assert task.checkpoint_metadata()["text_encoder"] == {"source": enc.source, "max_length": 16, "hidden_size": 32}
    grid = task.preview(modules, _batch())  # one labelled column per class name, 3 // 2 = 1 row
    assert grid.labels == ["Sneaker", "Bag"] and grid.sections[0].images.shape == (2, 3, 4, 4)


def test_task_refuses_a_missing_encoder_or_a_dim_mismatch(enc):
    with pytest.raises(ValueError, match="no text encoder"):
        DiffusionTask(UNET, DiffusionConfig(), OptimConfig(), LatentCodec.identity(), "latent")
    bad = UNetConfig(**{**UNET.__dict__, "cross_attention_dim": 64})
    with pytest.raises(ValueError, match=r"unet.cross_attention_dim=64 but the text encoder .* hidden size 32"):
        _task(enc, unet=bad)


def test_run_config_text_section(clip_dir, tmp_path):
    cfg = load_config(LDMRunConfig, TEXT_DEBUG, [f"text.path={clip_dir}"])
    assert cfg.unet.conditioning == "text" and cfg.unet.cross_attention_dim == 32 and cfg.text.max_length == 16
    assert build_text_encoder(cfg).hidden_size == cfg.unet.cross_attention_dim
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_text_encoder(load_config(LDMRunConfig, TEXT_DEBUG, [f"text.path={tmp_path / 'missing'}"]))
    with pytest.raises(ValueError, match="text.path is set but unet.conditioning is 'class'"):
        build_text_encoder(load_config(LDMRunConfig, TEXT_DEBUG, [f"text.path={clip_dir}", "unet.conditioning=class",
                                                                   "unet.num_classes=10"]))
    with pytest.raises(ConfigError, match="text.max_lenght"):
        load_config(LDMRunConfig, TEXT_DEBUG, ["text.max_lenght=8"])


# ---- the pipeline, untrained ------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe(enc):
    from ldm_system.serving.pipeline import LDMPipeline

    return LDMPipeline(Denoiser(UNET), LatentCodec.identity(), DiffusionConfig(), text=enc)


def test_guided_text_sampling_is_one_batched_call_per_step(pipe, enc, monkeypatch):
    calls = []

    def counting(x, t, cond):
        calls.append((x.shape[0], cond.shape))
        return pipe.net(x, t, cond)

    monkeypatch.setattr(pipe, "model_fn", counting)
    out = pipe.sample(2, prompts=["Sneaker", "Bag"], guidance=3.0, steps=3)
    assert out.shape == (2, 3, 4, 4)
    assert calls == [(4, (4, 16, 32))] * 3  # cond + empty-prompt null, concatenated: 2B rows, one call


def test_guidance_is_u_plus_s_times_c_minus_u(pipe, enc):
    g = pipe.conditioning.guidance(3.0, enc.encode(["Bag"]))
    torch.testing.assert_close(g.null_cond, enc.null())
    x, t = torch.randn(1, 3, 4, 4), torch.tensor([500])
    from ldm_system.diffusion.guidance import guided_output

    c, u = pipe.net(x, t, enc.encode(["Bag"])), pipe.net(x, t, enc.null())
    torch.testing.assert_close(guided_output(pipe.model_fn, x, t, enc.encode(["Bag"]), g), u + 3.0 * (c - u),
                               rtol=1e-4, atol=1e-5)


def test_pipeline_prompt_errors(pipe):
    with pytest.raises(ValueError, match="give a list of 2 prompts"):
        pipe.sample(2, prompts=["Sneaker"], steps=1)
    with pytest.raises(ValueError, match="pass prompts, not classes"):
        pipe.sample(2, classes=["Sneaker", "Bag"], steps=1)
    assert pipe.sample(1, steps=1).shape == (1, 3, 4, 4)  # no prompt: the empty prompt (unconditional)


def test_class_pipeline_refuses_prompts():
    from ldm_system.serving.pipeline import LDMPipeline

    cls_unet = UNetConfig(sample_size=4, in_channels=3, block_out_channels=(16, 32), attention_levels=(False, False),
                          layers_per_block=1, norm_num_groups=8, conditioning="class", num_classes=3)
    p = LDMPipeline(Denoiser(cls_unet), LatentCodec.identity(), DiffusionConfig())
    with pytest.raises(ValueError, match="not text-conditional"):
        p.sample(1, prompts=["Bag"], steps=1)


def test_text_pipeline_needs_a_matching_encoder(enc):
    from ldm_system.serving.pipeline import LDMPipeline

    with pytest.raises(ValueError, match="needs its text encoder"):
        LDMPipeline(Denoiser(UNET), LatentCodec.identity(), DiffusionConfig())
    bad = UNetConfig(**{**UNET.__dict__, "cross_attention_dim": 48})
    with pytest.raises(ValueError, match="cross_attention_dim=48 but the text encoder .* hidden size 32"):
        LDMPipeline(Denoiser(bad), LatentCodec.identity(), DiffusionConfig(), text=enc)

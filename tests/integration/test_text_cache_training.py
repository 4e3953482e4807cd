"""Stage 2 from cached text embeddings (`ldm data encode --text-encoder`): a step conditions on the
shards' cached states and never runs the encoder, gives the loss online encoding gives (within fp16
storage), and a cache made with another encoder or another length is refused before training."""
from __future__ import annotations

import pytest
import torch

from ldm_fixtures import ROOT, build_debug_latents
from ldm_system.config import load_config
from ldm_system.data.stream import StreamConfig, make_loader
from ldm_system.diffusion.config import DiffusionConfig
from ldm_system.models.latent import LatentCodec
from ldm_system.models.text import TextEncoder, save_random_text_encoder
from ldm_system.train.diffusion_task import DiffusionTask, OptimConfig, PreviewConfig
from ldm_system.train.runs import LDMRunConfig, cached_null_text, run_ldm

TEXT_DEBUG = ROOT / "configs" / "ldm" / "fmnist-text-debug.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(root, latent folder without a cache, latent folder with one, the encoder's folder)."""
    from ldm_system.data.encode import encode_shards

    root = tmp_path_factory.mktemp("text-cache")
    clip = save_random_text_encoder(root / "clip", hidden_size=32, max_length=16)
    plain = build_debug_latents(root, num_images=64)
    encode_shards(root / "ae" / "autoencoder", root / "images", root / "cached", batch_size=64, shard_size=64,
                  progress=False, text_encoder=clip, text_max_length=16)
    return root, plain, root / "cached", clip


def _cfg(data, shards, *extra) -> LDMRunConfig:
    root, _, _, clip = data
    return load_config(LDMRunConfig, TEXT_DEBUG, [f"data.shards={shards}", f"train.out_dir={root / 'run'}",
                                                  f"text.path={clip}", "data.batch_size=8", *extra])


def _task(cfg: LDMRunConfig, enc: TextEncoder, cached_null=None) -> DiffusionTask:
    return DiffusionTask(cfg.unet, DiffusionConfig(cond_drop_prob=0.5), OptimConfig(), LatentCodec.identity(),
                         "latent", PreviewConfig(num_images=2, steps=2), text=enc, cached_null=cached_null)


def _loss(task: DiffusionTask, modules, batch) -> torch.Tensor:
    torch.manual_seed(7)  # the same dropout draws, timesteps and noise for both tasks
    (_, loss), = list(task.losses(modules, batch, step=0))
    return loss


def test_cached_states_give_the_online_loss_without_running_the_encoder(data) -> None:
    _, plain, cached, clip = data
    cfg = _cfg(data, cached)
    enc = TextEncoder.from_pretrained(clip, max_length=16)
    calls = []
    enc.model.register_forward_hook(lambda *_: calls.append(1))
    null = cached_null_text(cfg)
    assert null is not None and null.shape == (1, 16, 32)
    online, offline = _task(cfg, enc), _task(cfg, enc, cached_null=null)
    offline.to_device(torch.device("cpu"))
    assert enc.model.training is False and enc.deliver_to == torch.device("cpu")
    torch.manual_seed(0)
    modules = online.build()
    with_cache = make_loader(StreamConfig(shards=str(cached), batch_size=8, num_workers=0, infinite=False))
    without = make_loader(StreamConfig(shards=str(plain), batch_size=8, num_workers=0, infinite=False))
    for step, (a, b) in enumerate(zip(with_cache, without)):
        assert a.keys == b.keys and b.text is None and a.text.shape == (8, 16, 32)
        torch.testing.assert_close(a.images, b.images)
        calls.clear()
        cached_loss = _loss(offline, modules, a)
        assert calls == [], "the encoder ran in a training step that had cached states"
        online_loss = _loss(online, modules, b)
        assert len(calls) == 1  # the hook does see the online path's forward
        torch.testing.assert_close(cached_loss, online_loss, rtol=2e-3, atol=1e-4)  # fp16 cached states
        if step == 3:
            break
    # dropped rows are the cached empty caption's states
    torch.manual_seed(7)
    dropped = _task(cfg, enc, cached_null=null)
    dropped.diff_cfg = DiffusionConfig(cond_drop_prob=1.0)
    batch = next(iter(with_cache))
    torch.testing.assert_close(dropped.condition(batch), null.expand(8, -1, -1))
    calls.clear()
    offline.preview(modules, batch)
    assert calls  # previews still encode their prompts, with the encoder on the CPU


def test_run_trains_from_the_cache_and_keeps_the_encoder_on_the_cpu(data) -> None:
    tr = run_ldm(_cfg(data, data[2], "train.steps=2", "preview.num_images=2",
                      "preview.steps=2"))
    assert tr.step == 2 and tr.task.cached_null is not None
    # the encoder sits on the CPU and hands its (preview) states to the training device
    assert tr.task.text.device.type == "cpu" and tr.task.text.deliver_to == tr.accelerator.device
    assert tr.task.info["text_encoder"]["max_length"] == 16  # what export reads


def test_resume_from_cached_states_is_exact(data) -> None:
    """Dropout on cached states draws from the global RNG, which checkpoints restore."""
    root = data[0]

    def run(out: str, steps: int, resume: str | None = None):
        cfg = _cfg(data, data[2], f"train.out_dir={root / out}", f"train.steps={steps}", "diffusion.cond_drop_prob=0.5",
                   "preview.num_images=2", "preview.steps=2")
        return run_ldm(cfg, resume=resume).raw["unet"].state_dict()

    full = run("full", 4)
    run("split", 2)
    resumed = run("split", 4, resume="latest")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_tag_shuffling_or_no_cache_encode_online(data) -> None:
    _, plain, cached, _ = data
    assert cached_null_text(_cfg(data, plain)) is None
    assert cached_null_text(_cfg(data, cached, "data.shuffle_tags=true")) is None


def test_a_cache_from_another_encoder_or_length_is_refused(data) -> None:
    root, _, cached, _ = data
    other = save_random_text_encoder(root / "clip-other", hidden_size=32, max_length=16, seed=1)
    with pytest.raises(ValueError, match="cached with another text encoder"):
        run_ldm(_cfg(data, cached, f"text.path={other}", "train.steps=1"))
    with pytest.raises(ValueError, match="cached with max_length 16, but text.max_length=8; set text.max_length=16"):
        cached_null_text(_cfg(data, cached, "text.max_length=8"))

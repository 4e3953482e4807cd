"""A user's folder of mixed shapes and caption layouts, end to end on buckets (one process): pack with
--buckets, stage 1 a few steps on bucketed batches, `ldm data encode` keeping each latent's own shape,
stage 2 a few steps on mixed-shape latents, and a resumed stage 2 that matches an uninterrupted one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from bucket_fixtures import SHAPES, build_bucket_latents
from ldm_fixtures import LDM_DEBUG
from ldm_system.config import load_config
from ldm_system.data.stream import StreamConfig, make_loader
from ldm_system.train.runs import LDMRunConfig, check_unet_fits, run_ldm


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("buckets")
    return (root, *build_bucket_latents(root))


def test_pack_encode_keep_every_bucket(stages) -> None:
    root, m, lat = stages
    assert m.num_samples == len(SHAPES) and m.meta["captions"]["none"] == 0
    assert m.meta["area_lost"]["max"] > 0.25  # the 1:10 strip, beyond 1:4
    pixel = {(b["width"], b["height"]): b["count"] for b in m.meta["buckets"] if b["count"]}
    assert len(pixel) >= 5
    latent = {(b["width"], b["height"]): b["count"] for b in lat.meta["buckets"]}
    assert latent == {(w // 4, h // 4): n for (w, h), n in pixel.items()}  # each latent keeps its own shape
    assert lat.meta["latent_shape"] == [3, 8, 8] and lat.image_size is None
    seen = {}
    for b in make_loader(StreamConfig(shards=str(root / "latents"), batch_size=3, num_workers=0, infinite=False)):
        seen.update({k: tuple(b.images.shape[2:]) for k in b.keys})
        for record, z in zip(b.placements, b.images):  # the size-conditioning record travels with the latent
            w, h = json.loads(record)["bucket"]
            assert tuple(z.shape[1:]) == (h // 4, w // 4)
        assert len(b.placements) == b.size
    assert len(seen) == len(SHAPES) and len(set(seen.values())) == len(pixel)


def _ldm(root: Path, out: str, steps: int):
    return load_config(LDMRunConfig, LDM_DEBUG, [f"data.shards={root / 'latents'}", f"train.out_dir={root / out}",
                                                 "data.batch_size=2", f"train.steps={steps}", "train.checkpoint.every=2",
                                                 "preview.num_images=2", "preview.steps=2", "train.log.every=1"])


def test_stage2_trains_on_mixed_shapes_and_resumes_exactly(stages) -> None:
    root, _, _ = stages
    shapes = {tuple(b.images.shape[2:]) for b in (lambda it: [next(it) for _ in range(4)])(iter(
        make_loader(_ldm(root, "probe", 4).data)))}
    assert len(shapes) >= 2  # the four steps below see several buckets
    full = run_ldm(_ldm(root, "full", 4))
    assert full.step == 4
    first = run_ldm(_ldm(root, "split", 2))
    assert first.step == 2
    resumed = run_ldm(_ldm(root, "split", 4), resume="latest")
    assert resumed.step == 4
    a, b = full.raw["unet"].state_dict(), resumed.raw["unet"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unet_check_is_divisibility_not_equality() -> None:
    from ldm_system.models.unet import UNetConfig

    unet = UNetConfig(sample_size=8, in_channels=3, block_out_channels=(32, 64), attention_levels=(False, True))
    check_unet_fits(unet, [3, 6, 12])  # another bucket than the base size trains
    with pytest.raises(ValueError, match="latents are 6x5, not divisible by the UNet's downsampling 2"):
        check_unet_fits(unet, [3, 6, 5])


def test_sample_a_non_square_image(stages, tmp_path: Path, capsys) -> None:
    from ldm_system.cli import main
    from ldm_system.serving.export import export_checkpoint
    from ldm_system.serving.pipeline import LDMPipeline

    root, _, _ = stages
    if not (root / "full").exists():
        run_ldm(_ldm(root, "full", 4))
    model = export_checkpoint(root / "full", tmp_path / "model")
    pipe = LDMPipeline.from_pretrained(model)
    assert pipe.pixel_step == 8  # f=4 times the UNet's downsampling 2
    images = pipe.sample(2, steps=2, height=24, width=48)
    assert images.shape == (2, 1, 24, 48) and torch.isfinite(images).all()
    with pytest.raises(ValueError, match="height 20 is not a multiple of 8"):
        pipe.sample(1, steps=2, height=20)
    out = tmp_path / "wide.png"
    assert main(["sample", "--model", str(model), "--num", "2", "--steps", "2", "--width", "64", "--height", "16",
                 "--out", str(out), "--no-progress"]) == 0
    assert Image.open(out).size[0] > Image.open(out).size[1]  # a grid of two 64x16 images
    code = main(["sample", "--model", str(model), "--num", "1", "--steps", "2", "--width", "30", "--out",
                 str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "width 30 is not a multiple of 8" in err and "Traceback" not in err
    code = main(["sample", "--model", str(model), "--height", "0", "--out", str(out), "--no-progress"])
    assert code == 2 and "--height must be positive, got 0" in capsys.readouterr().err


def test_encode_refuses_buckets_the_autoencoder_cannot_divide(stages, tmp_path: Path) -> None:
    from ldm_system.data.encode import encode_shards
    from ldm_system.data.pack import pack

    root, _, _ = stages
    pack(str(root / "src"), tmp_path / "odd", image_size=12, buckets=True, bucket_step=2, channels=1)
    with pytest.raises(ValueError, match="not multiples of the autoencoder's f=4; repack with a --bucket-step "
                                         "that is a multiple of 4"):
        encode_shards(root / "ae" / "autoencoder", tmp_path / "odd", tmp_path / "lat", progress=False)


def test_cached_text_embeddings(stages, tmp_path: Path) -> None:
    from ldm_system.data.encode import encode_shards
    from ldm_system.data.text_cache import check_text_encoder, load_null_text
    from ldm_system.models.text import TextEncoder, save_random_text_encoder

    root, _, _ = stages
    clip = save_random_text_encoder(tmp_path / "clip", hidden_size=32, max_length=16)
    m = encode_shards(root / "ae" / "autoencoder", root / "images", tmp_path / "lat", batch_size=4, progress=False,
                      text_encoder=clip, text_max_length=16)
    ident = m.meta["text_encoder"]
    assert ident["hidden_size"] == 32 and ident["max_length"] == 16 and len(ident["weights_sha256"]) == 64
    enc = TextEncoder.from_pretrained(clip, 16)
    n = 0
    for b in make_loader(StreamConfig(shards=str(tmp_path / "lat"), batch_size=3, num_workers=0, infinite=False)):
        assert b.text is not None and b.text.shape == (b.size, 16, 32) and b.text.dtype == torch.float32
        torch.testing.assert_close(b.text, enc.encode(b.captions), atol=2e-2, rtol=1e-2)  # fp16 storage
        n += b.size
    assert n == len(SHAPES)
    torch.testing.assert_close(load_null_text(tmp_path / "lat"), enc.null(), atol=2e-2, rtol=1e-2)
    check_text_encoder(m, clip, tmp_path / "lat")  # the same encoder (another path would do too)
    other = save_random_text_encoder(tmp_path / "clip2", hidden_size=32, max_length=16, seed=1)
    with pytest.raises(ValueError, match="cached with another text encoder"):
        check_text_encoder(m, other, tmp_path / "lat")

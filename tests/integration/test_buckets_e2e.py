"""A user's folder of mixed shapes and caption layouts, end to end on buckets (one process): pack with
--buckets, stage 1 a few steps on bucketed batches, `ldm data encode` keeping each latent's own shape,
stage 2 a few steps on mixed-shape latents, and a resumed stage 2 that matches an uninterrupted one."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldm_fixtures import AE_DEBUG, LDM_DEBUG
from ldm_system.config import load_config
from ldm_system.data.encode import encode_shards
from ldm_system.data.manifest import read_manifest
from ldm_system.data.pack import pack
from ldm_system.data.stream import StreamConfig, make_loader
from ldm_system.train.runs import AERunConfig, LDMRunConfig, check_unet_fits, run_autoencoder, run_ldm

# (name, width, height): portraits, landscapes, a banner, a strip, a thumbnail, squares.
SHAPES = [("p34", 60, 80), ("p916", 54, 96), ("l169", 128, 72), ("l21", 80, 40), ("b41", 160, 40),
          ("s110", 20, 200), ("thumb", 20, 30), ("sq1", 50, 50), ("sq2", 64, 64), ("p23", 40, 60),
          ("l32", 90, 60), ("sq3", 33, 33)]


def build_folder(root: Path) -> None:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (name, w, h) in enumerate(SHAPES):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{name}.png")
        if i % 3 == 0:
            (root / f"{name}.txt").write_text(f"a {name} photo", encoding="utf-8")
        elif i % 3 == 1:
            (root / f"{name}.caption").write_text(f"{name}, tag one, tag two", encoding="utf-8")
    rows = [{"file_name": f"{n}.png", "text": f"meta {n}"} for i, (n, _, _) in enumerate(SHAPES) if i % 3 == 2]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("buckets")
    build_folder(root / "src")
    m = pack(str(root / "src"), root / "images", image_size=32, buckets=True, bucket_step=8, channels=1, shard_size=4)
    cfg = load_config(AERunConfig, AE_DEBUG, [f"data.shards={root / 'images'}", f"train.out_dir={root / 'ae'}",
                                               "data.batch_size=2", "train.steps=2", "train.ckpt_every=0",
                                               "scale_batches=100", "loss.disc_start=1"])
    run_autoencoder(cfg)
    lat = encode_shards(root / "ae" / "autoencoder", root / "images", root / "latents", batch_size=4, progress=False)
    return root, m, lat


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
    assert len(seen) == len(SHAPES) and len(set(seen.values())) == len(pixel)


def _ldm(root: Path, out: str, steps: int):
    return load_config(LDMRunConfig, LDM_DEBUG, [f"data.shards={root / 'latents'}", f"train.out_dir={root / out}",
                                                 "data.batch_size=2", f"train.steps={steps}", "train.ckpt_every=2",
                                                 "preview.num_images=2", "preview.steps=2", "train.log_every=1"])


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

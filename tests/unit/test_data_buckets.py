"""Aspect-ratio buckets at pack time: the bucket list, each stored image's bucket and crop, the manifest."""
from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm_system.data.buckets import bucket_list, check_bucket_step, place, worst_area_lost
from ldm_system.data.pack import pack

# (name, width, height): the shapes users' folders hold, including two beyond 1:4..4:1.
SHAPES = [
    ("portrait_3x4", 300, 400),
    ("portrait_9x16", 270, 480),
    ("landscape_16x9", 640, 360),
    ("landscape_2x1", 400, 200),
    ("banner_4x1", 800, 200),
    ("strip_1x10", 50, 500),
    ("thumb_20x30", 20, 30),
    ("square_a", 256, 256),
    ("square_b", 90, 90),
]
SIZE = 64


def pattern(w: int, h: int, seed: int) -> Image.Image:
    """A smooth but position-dependent RGB image, so a wrong crop offset shows in the pixels."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), (x + y + seed * 40) % 256], -1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def make_shapes_folder(root: Path) -> dict[str, Image.Image]:
    root.mkdir(parents=True)
    originals = {}
    for i, (name, w, h) in enumerate(SHAPES):
        img = pattern(w, h, i)
        img.save(root / f"{name}.png")
        originals[name] = img
    return originals


def read_samples(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def test_default_buckets_cover_every_aspect_with_at_most_a_quarter_lost() -> None:
    for size, step in [(64, 8), (32, 8), (64, 16), (256, 32), (512, 64)]:
        buckets = bucket_list(size, step)
        assert all(w % step == 0 and h % step == 0 for w, h in buckets)
        assert all(abs(w * h - size * size) <= 0.25 * size * size for w, h in buckets)
        assert all(max(w / h, h / w) <= 4 for w, h in buckets)
        assert (size, size) in buckets
        assert (size * 2, size // 2) in buckets and (size // 2, size * 2) in buckets  # exactly 4:1 and 1:4
        assert worst_area_lost(buckets, 4.0) <= 0.25
    with pytest.raises(ValueError, match="--bucket-step 16"):
        bucket_list(64, 32)  # only 64x64, 32x128, 128x32: gaps too wide; a smaller step is named
    with pytest.raises(ValueError, match="not a multiple of --bucket-step"):
        bucket_list(60, 8)


def test_training_check_names_a_step_that_works() -> None:
    check_bucket_step(16, 8)
    with pytest.raises(ValueError, match="repack with --bucket-step 16"):
        check_bucket_step(8, 16)


def test_each_stored_image_is_its_original_in_the_nearest_bucket(tmp_path: Path) -> None:
    originals = make_shapes_folder(tmp_path / "src")
    m = pack(str(tmp_path / "src"), tmp_path / "out", image_size=SIZE, buckets=True, shard_size=4)
    buckets = bucket_list(SIZE)
    samples = read_samples(tmp_path / "out")
    assert m.num_samples == len(SHAPES) and m.image_size is None  # mixed shapes
    lost = {}
    for key, entries in samples.items():
        name = key.split("_", 1)[1]
        orig = originals[name]
        info = json.loads(entries["json"])
        stored = Image.open(io.BytesIO(entries["png"]))
        bw, bh = info["bucket"]
        assert stored.size == (bw, bh) and info["original_size"] == list(orig.size)
        # Nearest bucket in log-aspect, found by brute force here.
        a = math.log(orig.width / orig.height)
        best = min(abs(math.log(w / h) - a) for w, h in buckets)
        assert abs(math.log(bw / bh) - a) == best
        # The resize covers the bucket, keeps the aspect (to a pixel) and the crop is centred.
        rw, rh = info["resized_size"]
        left, top = info["crop_left_top"]
        assert rw >= bw and rh >= bh and (rw == bw or rh == bh)
        assert abs(rw / rh - orig.width / orig.height) <= 1 / min(rw, rh) * max(rw / rh, 1)
        assert (left, top) == ((rw - bw) // 2, (rh - bh) // 2)
        # The pixels are the original, resized and cropped by exactly what the json says.
        expect = orig.resize((rw, rh), Image.Resampling.LANCZOS).crop((left, top, left + bw, top + bh))
        assert np.array_equal(np.asarray(stored), np.asarray(expect))
        lost[name] = 1 - bw * bh / (rw * rh)
    for name, w, h in SHAPES:
        if max(w / h, h / w) <= 4:
            assert lost[name] <= 0.25, (name, lost[name])
    # Beyond 1:4, the strip goes to the tallest bucket.
    strip = next(json.loads(e["json"]) for k, e in samples.items() if k.endswith("strip_1x10"))
    assert strip["bucket"] == [32, 128]
    # The manifest lists every bucket with its count, and the area the crops took.
    listed = {(b["width"], b["height"]): b["count"] for b in m.meta["buckets"]}
    assert set(listed) == set(buckets) and sum(listed.values()) == len(SHAPES)
    assert listed[(64, 64)] == 2 and listed[(128, 32)] == 1
    assert m.meta["area_lost"]["max"] == pytest.approx(max(lost.values()), abs=1e-4)
    assert m.meta["bucket_step"] == 8 and m.meta["max_aspect"] == 4.0 and m.meta["base_size"] == SIZE


def test_without_buckets_nothing_changes(tmp_path: Path) -> None:
    make_shapes_folder(tmp_path / "src")
    m = pack(str(tmp_path / "src"), tmp_path / "out", image_size=SIZE)
    assert m.image_size == SIZE and "buckets" not in m.meta
    assert all("json" not in e for e in read_samples(tmp_path / "out").values())
    with pytest.raises(ValueError, match="--buckets needs --image-size"):
        pack(str(tmp_path / "src"), tmp_path / "out2", buckets=True)


def test_placement_of_extreme_and_tiny_images() -> None:
    buckets = bucket_list(SIZE)
    assert place(20, 30, buckets).resized[0] >= place(20, 30, buckets).bucket[0]  # upscaled to cover
    assert place(1000, 10, buckets).bucket == (128, 32)


def test_cli_prints_buckets_and_refuses_a_coarse_step(tmp_path: Path, capsys) -> None:
    from ldm_system.cli import main

    make_shapes_folder(tmp_path / "src")
    assert main(["data", "pack", str(tmp_path / "src"), str(tmp_path / "out"), "--image-size", "64", "--buckets"]) == 0
    out = capsys.readouterr().out
    assert "buckets (WxH:count): " in out and "64x64:2" in out and "area lost: mean" in out
    assert main(["data", "pack", str(tmp_path / "src"), str(tmp_path / "o2"), "--image-size", "64", "--buckets",
                 "--bucket-step", "32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ldm data pack: error: buckets for --image-size 64 with --bucket-step 32 leave aspect "
                              "gaps") and "--bucket-step 16" in err[-1]

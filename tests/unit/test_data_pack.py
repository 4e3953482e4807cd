"""Packing an image folder into shards: labels, captions, colour modes, skipped files, manifest."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from ldm_system.data.manifest import Manifest, read_manifest
from ldm_system.data.pack import PackConfig, pack
from ldm_system.data.writer import ShardWriter, check_key, verify_shards

RED = (200, 30, 40)


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kw)


def make_mixed_folder(root: Path) -> None:
    """7 usable images (2 classes + 1 unlabelled), 5 files to skip, 1 hidden file to ignore."""
    _save(Image.new("RGB", (24, 20), RED), root / "cats" / "a.png", "PNG")
    _save(Image.new("RGB", (30, 30), RED), root / "cats" / "B.JPG", "JPEG")
    (root / "cats" / "B.txt").write_text("  a cat on a mat\n", encoding="utf-8")
    _save(Image.new("RGB", (16, 16), RED), root / "cats" / "nested" / "deep.webp", "WEBP")
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((0, 0), (*RED, 255))
    _save(rgba, root / "dogs" / "rgba.png", "PNG")
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, *RED] + [0] * 762)
    pal.info["transparency"] = 1  # palette entry 1 (red) is transparent
    _save(pal, root / "dogs" / "pal.png", "PNG", transparency=1)
    _save(Image.new("L", (16, 16), 77), root / "dogs" / "gray.bmp", "BMP")
    _save(Image.new("RGB", (16, 16), RED), root / "root.png", "PNG")
    # Things to skip.
    (root / "dogs" / "empty.png").write_bytes(b"")
    (root / "dogs" / "fake.png").write_text("this is not a png", encoding="utf-8")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), RED).save(buf, format="JPEG")
    (root / "dogs" / "corrupt.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "dogs" / "notes.txt").write_text("caption of nothing", encoding="utf-8")
    (root / "dogs" / "readme.md").write_text("# hi", encoding="utf-8")
    _save(Image.new("RGB", (8, 8)), root / ".hidden" / "x.png", "PNG")


def read_shard_samples(folder: Path, manifest: Manifest) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in manifest.shards:
        with tarfile.open(folder / shard.name) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def by_stem(samples: dict[str, dict[str, bytes]], stem: str) -> dict[str, bytes]:
    (hit,) = [v for k, v in samples.items() if k.endswith(stem)]
    return hit


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Path, Manifest]:
    src = tmp_path / "src"
    make_mixed_folder(src)
    out = tmp_path / "out"
    return out, pack(str(src), out, shard_size=3, image_size=16, seed=1)


def test_manifest_counts_and_skip_reasons(mixed: tuple[Path, Manifest]) -> None:
    out, manifest = mixed
    assert manifest.num_samples == 7
    assert [s.num_samples for s in manifest.shards] == [3, 3, 1]
    assert [s.name for s in manifest.shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert manifest.classes == ("cats", "dogs")
    assert manifest.image_size == 16 and manifest.channels == 3
    reasons = {s.path: s.reason for s in manifest.skipped}
    assert set(reasons) == {
        "dogs/empty.png", "dogs/fake.png", "dogs/corrupt.jpg", "dogs/notes.txt", "dogs/readme.md",
    }
    assert reasons["dogs/empty.png"] == "empty file"
    assert reasons["dogs/fake.png"].startswith("not an image")
    assert reasons["dogs/corrupt.jpg"].startswith("unreadable image")
    assert reasons["dogs/notes.txt"] == "caption without an image"
    assert reasons["dogs/readme.md"] == "unsupported extension '.md'"
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["skipped"]["count"] == 5 and on_disk["num_samples"] == 7
    assert on_disk["skipped"]["by_reason"]["not an image"] == 1
    assert read_manifest(out) == manifest
    assert verify_shards(out) == []


def test_labels_captions_and_colour_policy(mixed: tuple[Path, Manifest]) -> None:
    out, manifest = mixed
    samples = read_shard_samples(out, manifest)
    assert len(samples) == 7
    assert all(set(s) == {"png", "cls", "txt"} for s in samples.values())
    label = {stem: int(by_stem(samples, stem)["cls"]) for stem in
             ("cats_a", "cats_B", "cats_nested_deep", "dogs_rgba", "dogs_pal", "dogs_gray", "root")}
    assert label == {"cats_a": 0, "cats_B": 0, "cats_nested_deep": 0, "dogs_rgba": 1,
                     "dogs_pal": 1, "dogs_gray": 1, "root": -1}
    assert by_stem(samples, "cats_B")["txt"] == b"a cat on a mat"
    assert by_stem(samples, "cats_a")["txt"] == b""
    images = {stem: Image.open(io.BytesIO(by_stem(samples, stem)["png"])) for stem in
              ("dogs_rgba", "dogs_pal", "dogs_gray", "cats_a")}
    assert all(im.mode == "RGB" and im.size == (16, 16) for im in images.values())
    # Transparent pixels become white, not black.
    assert images["dogs_rgba"].getpixel((15, 15)) == (255, 255, 255)
    assert images["dogs_pal"].getpixel((8, 8)) == (255, 255, 255)
    r, g, b = images["dogs_gray"].getpixel((8, 8))
    assert r == g == b == 77


def test_pack_is_deterministic_and_seed_changes_order(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_mixed_folder(src)
    a = pack(str(src), tmp_path / "a", shard_size=3, image_size=16, seed=5)
    b = pack(str(src), tmp_path / "b", shard_size=3, image_size=16, seed=5)
    c = pack(str(src), tmp_path / "c", shard_size=3, image_size=16, seed=6)
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    assert [s.sha256 for s in a.shards] != [s.sha256 for s in c.shards]


def test_keeps_original_sizes_without_image_size(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_mixed_folder(src)
    manifest = pack(str(src), tmp_path / "out", channels=1)
    assert manifest.image_size is None  # 24x20, 30x30 and 16x16 images were kept as they are
    samples = read_shard_samples(tmp_path / "out", manifest)
    a = Image.open(io.BytesIO(by_stem(samples, "cats_a")["png"]))
    assert a.size == (24, 20) and a.mode == "L"


def test_refuses_to_overwrite_unless_asked(mixed: tuple[Path, Manifest], tmp_path: Path) -> None:
    out, _ = mixed
    with pytest.raises(FileExistsError, match="overwrite"):
        pack(str(tmp_path / "src"), out)
    manifest = pack(str(tmp_path / "src"), out, shard_size=100, overwrite=True)
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar"]
    assert manifest.num_samples == 7


def test_no_usable_images_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "broken.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no usable images.*broken.png: empty file"):
        pack(str(tmp_path / "src"), tmp_path / "out")


def test_missing_source_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a folder nor a built-in"):
        pack(str(tmp_path / "nope"), tmp_path / "out")


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="shard_size"):
        PackConfig(src="x", out_dir="y", shard_size=0)
    with pytest.raises(ValueError, match="image_size"):
        PackConfig(src="x", out_dir="y", image_size=-3)


def test_shards_are_readable_by_webdataset(mixed: tuple[Path, Manifest]) -> None:
    out, manifest = mixed
    urls = [str(out / s.name) for s in manifest.shards]
    ds = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("png", "cls", "txt")
    rows = list(ds)
    assert len(rows) == 7
    assert {int(c) for _, c, _ in rows} == {-1, 0, 1}
    assert all(img.size == (16, 16) for img, _, _ in rows)


def test_shard_writer_checksums_and_key_rules(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, shard_size=2) as w:
        for i in range(5):
            w.write(f"k{i}", {"latent.npy": np.float32(i).tobytes(), "cls": b"1"})
        with pytest.raises(ValueError, match="duplicate"):
            w.write("k0", {"cls": b"1"})
    manifest = w.write_manifest(source="test", split="train", kind="latents", image_size=4,
                                channels=4, meta={"latent_scale": 0.5})
    assert [s.num_samples for s in manifest.shards] == [2, 2, 1]
    assert read_manifest(tmp_path).meta == {"latent_scale": 0.5}
    assert verify_shards(tmp_path) == []
    with open(tmp_path / "shard-000001.tar", "r+b") as f:  # flip one payload byte
        f.seek(512)
        f.write(b"X")
    problems = verify_shards(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("shard-000001.tar: sha256")
    for bad in ("a.b", "", "a/b", "x" * 81):
        with pytest.raises(ValueError, match="invalid sample key"):
            check_key(bad)

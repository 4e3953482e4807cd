"""Built-in sources: Fashion-MNIST from the Debian IDX files, and scikit-image photo crops."""
from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm_system.data.pack import pack
from ldm_system.data.sources import fashion_mnist
from ldm_system.data.sources.fashion_mnist import (
    CLASSES,
    DatasetNotInstalledError,
    FashionMNISTSource,
    load_fashion_mnist,
    read_idx,
)
from ldm_system.data.sources.registry import open_source

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-labels-idx1-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed"
)
IDX_LABEL_OFFSET = 8  # magic (4 bytes) + count (4 bytes)


def golden_labels(name: str) -> np.ndarray:
    """Labels decoded independently of the reader under test: skip the 8-byte header."""
    with gzip.open(FMNIST / name) as f:
        return np.frombuffer(f.read()[IDX_LABEL_OFFSET:], dtype=np.uint8)


@needs_fmnist
def test_fashion_mnist_counts_and_labels() -> None:
    images, labels = load_fashion_mnist("train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,)
    gold = golden_labels("train-labels-idx1-ubyte.gz")
    for i in (0, 1, 2, 12345, 59999):
        assert labels[i] == gold[i]
    # Checked by hand against the upstream release: the first two training images.
    assert labels[0] == 9 and CLASSES[9] == "Ankle boot"
    assert labels[1] == 0 and CLASSES[0] == "T-shirt/top"
    assert np.bincount(labels).tolist() == [6000] * 10  # Fashion-MNIST is balanced

    test_images, test_labels = load_fashion_mnist("test")
    assert test_images.shape == (10000, 28, 28)
    assert np.array_equal(test_labels, golden_labels("t10k-labels-idx1-ubyte.gz"))
    assert test_labels[0] == 9


@needs_fmnist
def test_source_split_syntax_and_channels() -> None:
    src = open_source("builtin:fashion-mnist:test")
    assert isinstance(src, FashionMNISTSource) and src.split == "test" and len(src) == 10000
    assert src.channels == 1 and src.classes == CLASSES
    item = src.load(0)
    assert item.image.mode == "L" and item.image.size == (28, 28) and item.label == 9
    assert item.caption == "Ankle boot"
    assert open_source("builtin:fashion-mnist", split="test").split == "test"
    assert open_source("builtin:fashion-mnist", channels=3).channels == 3
    with pytest.raises(ValueError, match="split given twice"):
        open_source("builtin:fashion-mnist:test", split="validation")
    with pytest.raises(ValueError, match="split must be one of"):
        open_source("builtin:fashion-mnist:valid")
    with pytest.raises(ValueError, match="unknown built-in source 'mnist'"):
        open_source("builtin:mnist")


@needs_fmnist
def test_pack_fashion_mnist_limit_resize_and_labels(tmp_path: Path) -> None:
    manifest = pack("builtin:fashion-mnist", tmp_path, shard_size=40, image_size=32, limit=100, seed=3)
    assert manifest.num_samples == 100 and [s.num_samples for s in manifest.shards] == [40, 40, 20]
    assert manifest.classes == CLASSES and manifest.channels == 1 and manifest.image_size == 32
    assert manifest.source == "builtin:fashion-mnist:train"
    gold = golden_labels("train-labels-idx1-ubyte.gz")
    seen = {}
    for shard in manifest.shards:
        with tarfile.open(tmp_path / shard.name) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                seen.setdefault(key, {})[ext] = tar.extractfile(m).read()
    assert sorted(seen) == [f"fashion-mnist-train-{i:05d}" for i in range(100)]
    for key, entries in seen.items():
        index = int(key.rsplit("-", 1)[1])
        assert int(entries["cls"]) == gold[index]
        assert entries["txt"].decode() == CLASSES[gold[index]]
        img = Image.open(io.BytesIO(entries["png"]))
        assert img.mode == "L" and img.size == (32, 32)


def test_missing_fashion_mnist_files_say_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(fashion_mnist.DIR_ENV, raising=False)
    monkeypatch.setattr(fashion_mnist, "DEFAULT_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetNotInstalledError, match="sudo apt-get install dataset-fashion-mnist") as err:
        pack("builtin:fashion-mnist", tmp_path / "out")
    assert "train-images-idx3-ubyte.gz" in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_idx_reader_rejects_bad_files(tmp_path: Path) -> None:
    good = tmp_path / "good.gz"
    with gzip.open(good, "wb") as f:
        f.write(bytes([0, 0, 8, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6)))
    assert read_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(3))
    with pytest.raises(ValueError, match="holds 3 values"):
        read_idx(short)
    wrong = tmp_path / "wrong.gz"
    with gzip.open(wrong, "wb") as f:
        f.write(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(wrong)


def test_photos_source_is_reproducible(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    manifest = pack("builtin:photos", tmp_path / "a", num_samples=12, image_size=24, seed=7)
    again = pack("builtin:photos", tmp_path / "b", num_samples=12, image_size=24, seed=7)
    other = pack("builtin:photos", tmp_path / "c", num_samples=12, image_size=24, seed=8)
    assert manifest.num_samples == 12 and manifest.channels == 3 and manifest.image_size == 24
    assert len(manifest.classes) == 8 and "astronaut" in manifest.classes
    assert [s.sha256 for s in manifest.shards] == [s.sha256 for s in again.shards]
    assert [s.sha256 for s in manifest.shards] != [s.sha256 for s in other.shards]
    src = open_source("builtin:photos", num_samples=3, image_size=24, seed=7)
    item = src.load(0)
    assert item.image.mode == "RGB" and item.image.size == (24, 24)
    assert 0 <= item.label < 8 and item.caption == src.classes[item.label].replace("_", " ")
    # Crops of natural photos are not flat.
    assert np.asarray(item.image).std() > 1.0
    with pytest.raises(ValueError, match="num_samples applies to builtin:photos only"):
        open_source(str(tmp_path), num_samples=3)


def test_photos_without_skimage_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "skimage", None)  # makes `import skimage` raise ImportError
    with pytest.raises(ImportError, match=r"ldm-system\[photos\]"):
        open_source("builtin:photos", num_samples=2)

"""The streaming loader: exactly-once coverage, exact resume, damage tolerance, latent shards."""
from __future__ import annotations

import io
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldm_system.data.stream import StreamConfig, StreamLoader, make_loader
from ldm_system.data.tario import BLOCK
from ldm_system.data.writer import ShardWriter

NUM_CLASSES = 3


def png(value: int, size: int = 8, mode: str = "L") -> bytes:
    """A small image whose pixels encode `value`, with a gradient so that crops and flips show."""
    arr = (np.arange(size * size).reshape(size, size) + value) % 256
    img = Image.fromarray(arr.astype(np.uint8))
    if mode == "RGB":
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_image_shards(folder: Path, n: int, shard_size: int, size: int = 8) -> list[str]:
    keys = [f"s{i:04d}" for i in range(n)]
    with ShardWriter(folder, shard_size) as w:
        for i, key in enumerate(keys):
            w.write(key, {"png": png(i, size), "cls": str(i % NUM_CLASSES).encode(), "txt": f"c{i}".encode()})
    w.write_manifest(source="toy", split="train", kind="images", image_size=size, channels=1,
                     classes=tuple("abc"))
    return keys


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("shards")
    return folder, write_image_shards(folder, n=90, shard_size=10)


def cfg(folder: Path, **kw) -> StreamConfig:
    defaults = dict(shards=str(folder), batch_size=8, num_workers=2, shuffle_buffer=16, seed=3)
    return StreamConfig(**{**defaults, **kw})


@pytest.mark.parametrize("granularity", ["shard", "sample"])
def test_one_epoch_exactly_once_over_ranks_and_workers(shards, granularity: str) -> None:
    folder, keys = shards
    seen: list[str] = []
    for rank in range(2):  # two ranks simulated in one process, each with 2 workers
        loader = make_loader(cfg(folder, infinite=False, granularity=granularity), rank=rank, world_size=2)
        for batch in loader:
            images = batch.images
            assert images.shape[1:] == (1, 8, 8) and images.dtype == torch.float32
            assert images.min() >= -1 and images.max() <= 1
            assert batch.labels.dtype == torch.long and len(batch.captions) == len(batch.labels)
        # The loader moved on to epoch 1 by itself; iterate again to collect epoch 1 keys too.
        assert loader.epoch == 1
        seen += [k for b in loader for k in b.keys]
    counts = Counter(seen)
    assert set(counts) == set(keys) and set(counts.values()) == {1}


def test_labels_and_captions_travel_with_images(shards) -> None:
    folder, _ = shards
    for batch in make_loader(cfg(folder, infinite=False, num_workers=0)):
        for key, label, caption, image in zip(batch.keys, batch.labels, batch.captions, batch.images):
            i = int(key[1:])
            assert label == i % NUM_CLASSES and caption == f"c{i}"
            assert round((image[0, 0, 0].item() + 1) * 127.5) == i % 256  # pixel (0, 0) encodes i


def test_infinite_stream_rolls_over_epochs_with_new_order(shards) -> None:
    folder, keys = shards
    loader = make_loader(cfg(folder, batch_size=10, num_workers=0))  # 9 batches per epoch
    it = iter(loader)
    epoch0 = [k for _ in range(9) for k in next(it).keys]
    epoch1 = [k for _ in range(9) for k in next(it).keys]
    assert sorted(epoch0) == sorted(epoch1) == keys
    assert epoch0 != epoch1  # reshuffled with seed + epoch
    assert loader.epoch == 1 and loader.samples_consumed == 180


def run_batches(loader: StreamLoader, n: int) -> list:
    it = iter(loader)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("infinite", [True, False])
def test_resume_mid_epoch_continues_the_same_sequence(shards, infinite: bool) -> None:
    folder, _ = shards
    c = cfg(folder, infinite=infinite, image_size=6, crop="random", flip=True)
    total = 20 if infinite else 12  # 90 samples / 2 workers: 12 batches (two partial) per epoch
    reference = run_batches(make_loader(c), total)
    first = make_loader(c)
    head = run_batches(first, 5)
    state = json.loads(json.dumps(first.state_dict()))  # must survive JSON
    assert state["samples_consumed"] == 40 and state["epoch"] == 0
    resumed = make_loader(c)
    resumed.load_state_dict(state)
    tail = run_batches(resumed, total - 5)
    got = head + tail
    assert [b.keys for b in got] == [b.keys for b in reference]
    for a, b in zip(got, reference):
        assert torch.equal(a.images, b.images)  # same crops and flips, not only the same keys
    if not infinite:
        with pytest.raises(StopIteration):  # and the epoch ends where it ended before
            next(iter(resumed))
        assert resumed.epoch == 1


def test_resume_refuses_a_different_setup(shards, caplog: pytest.LogCaptureFixture) -> None:
    folder, _ = shards
    loader = make_loader(cfg(folder))
    run_batches(loader, 3)
    state = loader.state_dict()
    other = make_loader(cfg(folder, num_workers=1))
    with pytest.raises(ValueError, match="num_workers: saved 2, now 1"):
        other.load_state_dict(state)
    with caplog.at_level(logging.WARNING):
        other.load_state_dict(state, strict=False)
    assert "restarts epoch 0" in caplog.text
    assert other.samples_consumed == 24
    with pytest.raises(ValueError, match="world_size"):
        make_loader(cfg(folder), rank=0, world_size=2).load_state_dict(state)


def test_augmentation_does_not_depend_on_the_split(shards) -> None:
    folder, _ = shards
    c = dict(image_size=6, crop="random", flip=True, infinite=False)
    one = {k: img for b in make_loader(cfg(folder, num_workers=0, **c)) for k, img in zip(b.keys, b.images)}
    two = {k: img for b in make_loader(cfg(folder, **c)) for k, img in zip(b.keys, b.images)}
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)
    flipped = sum(not torch.equal(img, one[k]) for k, img in
                  ((k, img) for b in make_loader(cfg(folder, num_workers=0, image_size=6, infinite=False))
                   for k, img in zip(b.keys, b.images)))
    assert flipped > 10  # random crops/flips really changed many samples


def test_truncated_shard_and_corrupt_samples_are_survived(tmp_path: Path, caplog) -> None:
    keys = write_image_shards(tmp_path, n=40, shard_size=10)
    damaged = tmp_path / "shard-000001.tar"
    # Each sample is 3 members of one header block + one data block; cut inside the 3rd png.
    per_sample = 3 * 2 * BLOCK
    damaged.write_bytes(damaged.read_bytes()[: 2 * per_sample + BLOCK + 50])
    with ShardWriter(tmp_path / "bad", 10) as w:
        w.write("bad0", {"png": b"\x89PNG\r\n\x1a\n garbage", "cls": b"1"})
        w.write("bad1", {"png": png(1), "cls": b"one"})  # label is not an integer
        w.write("bad2", {"cls": b"2"})  # no payload at all
        w.write("good", {"png": png(2), "cls": b"2"})
    spec = f"{tmp_path}/shard-{{000000..000003}}.tar::{tmp_path}/bad/shard-000000.tar"
    for workers in (0, 2):
        loader = make_loader(StreamConfig(shards=spec, batch_size=4, num_workers=workers,
                                          infinite=False, granularity="sample"))
        with caplog.at_level(logging.WARNING):
            got = [k for b in loader for k in b.keys]
        assert loader.stats == {"corrupt_samples": 3, "damaged_shards": 1, "unreadable_shards": 0}
        expected = set(keys) - {f"s{i:04d}" for i in range(12, 20)} | {"good"}
        assert set(got) == expected and len(got) == len(expected)
    assert "damaged shard" in caplog.text and "corrupt sample" in caplog.text


def test_empty_streams_keep_going_and_unreadable_data_raises(tmp_path: Path) -> None:
    write_image_shards(tmp_path / "one", n=1, shard_size=1)
    # 2 worker streams, 1 sample: stream 1 gets nothing in any epoch, stream 0 carries on.
    loader = make_loader(StreamConfig(shards=str(tmp_path / "one"), batch_size=1, num_workers=2))
    assert [b.keys for b in run_batches(loader, 4)] == [["s0000"]] * 4
    assert loader.state_dict()["streams"][0]["epoch"] == 3
    write_image_shards(tmp_path / "dead", n=20, shard_size=5)
    for shard in (tmp_path / "dead").glob("*.tar"):
        shard.write_bytes(shard.read_bytes()[:100])
    dead = make_loader(StreamConfig(shards=str(tmp_path / "dead"), batch_size=4, num_workers=2))
    with pytest.raises(RuntimeError, match="received no samples"):
        next(iter(dead))
    assert dead.stats["damaged_shards"] >= 4


def test_latent_shards_are_returned_as_stored(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    latents = {f"z{i}": rng.standard_normal((4, 3, 5)).astype(np.float16) * 3 for i in range(6)}

    def npy(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    with ShardWriter(tmp_path, 3) as w:
        for key, z in latents.items():
            mean, logvar = z.astype(np.float32), np.full(z.shape, -2.0, np.float32)
            w.write(key, {"latent.npy": npy(z), "mean.npy": npy(mean), "logvar.npy": npy(logvar),
                          "cls": b"-1"})
    w.write_manifest(source="toy", split="train", kind="latents", image_size=None, channels=4)
    plain = [b for b in make_loader(StreamConfig(shards=str(tmp_path), batch_size=2, num_workers=0,
                                                 infinite=False))]
    for b in plain:
        assert b.images.shape == (2, 4, 3, 5) and b.images.dtype == torch.float32
        assert (b.labels == -1).all()
        for k, img in zip(b.keys, b.images):
            assert torch.equal(img, torch.from_numpy(latents[k].astype(np.float32)))  # no [-1, 1] map
    flipped = {k: img for b in make_loader(StreamConfig(shards=str(tmp_path), batch_size=2, num_workers=0,
                                                        infinite=False, flip=True)) for k, img in zip(b.keys, b.images)}
    n_flipped = sum(torch.equal(img, torch.from_numpy(latents[k].astype(np.float32)).flip(-1))
                    for k, img in flipped.items())
    assert 0 < n_flipped < 6
    drawn = {k: img for b in make_loader(StreamConfig(shards=str(tmp_path), batch_size=2, num_workers=0,
                                                      infinite=False, sample_posterior=True))
             for k, img in zip(b.keys, b.images)}
    noise = torch.stack([drawn[k] - torch.from_numpy(latents[k].astype(np.float32)) for k in drawn])
    assert abs(noise.std().item() - np.exp(-1.0)) < 0.05  # std = exp(logvar / 2)


def test_resampled_mode_is_endless(shards) -> None:
    folder, keys = shards
    loader = make_loader(cfg(folder, resampled=True, num_workers=0, batch_size=30))
    seen = [k for b in run_batches(loader, 8) for k in b.keys]  # 240 > 90 samples
    assert set(seen) <= set(keys) and max(Counter(seen).values()) > 1


def test_shard_specs(shards, tmp_path: Path) -> None:
    folder, keys = shards
    by_pattern = make_loader(cfg(f"{folder}/shard-{{000000..000008}}.tar"))
    assert len(by_pattern.shard_list.shards) == 9 and by_pattern.num_samples == 90  # counts from manifest
    assert make_loader(cfg(folder / "manifest.json")).num_samples == 90
    with pytest.raises(FileNotFoundError, match="do not exist"):
        make_loader(cfg(f"{folder}/shard-{{000000..000010}}.tar"))
    with pytest.raises(FileNotFoundError, match="neither manifest.json nor"):
        make_loader(cfg(tmp_path))


def test_bad_config_values_are_rejected(shards) -> None:
    folder, _ = shards
    bad = [
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(num_workers=-1), "num_workers must be >= 0"),
        (dict(crop="middle"), "crop must be one of"),
        (dict(crop="random"), "needs image_size"),
        (dict(channels=2), "channels must be 1, 3 or null"),
        (dict(granularity="file"), "granularity must be one of"),
        (dict(resampled=True, granularity="sample"), "resampled mode reads whole shards"),
    ]
    for kw, message in bad:
        with pytest.raises(ValueError, match=message):
            cfg(folder, **kw)
    with pytest.raises(ValueError, match="rank must be in"):
        make_loader(cfg(folder), rank=2, world_size=2)


def test_mixed_image_sizes_need_image_size(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, 10) as w:
        w.write("a", {"png": png(0, 8)})
        w.write("b", {"png": png(0, 12, "RGB")})
    loader = make_loader(StreamConfig(shards=str(tmp_path), batch_size=2, num_workers=0, shuffle_buffer=0))
    with pytest.raises(ValueError, match="set image_size"):
        next(iter(loader))
    fixed = make_loader(StreamConfig(shards=str(tmp_path), batch_size=2, num_workers=0, image_size=8, channels=3))
    assert next(iter(fixed)).images.shape == (2, 3, 8, 8)

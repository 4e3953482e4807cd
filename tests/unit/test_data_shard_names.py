"""Shard names found on disk are data, never commands (issue 11, part 1).

webdataset's `gopen` runs a `pipe:` URL through a shell. A downloaded dataset can hold a file called
`pipe:touch PWNED;.tar`; listing its folder must read that file as a (broken) tar, never run it.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldm_system.data.manifest import MANIFEST_NAME
from ldm_system.data.shardlist import resolve_shards
from ldm_system.data.stream import StreamConfig, make_loader
from ldm_system.data.tario import open_shard
from ldm_system.data.writer import ShardWriter

MARKER = "PWNED"
HOSTILE = f"pipe:touch {MARKER};.tar"


def write_image_shards(folder: Path, n: int, shard_size: int) -> list[str]:
    """n tiny grayscale PNG samples in shards of `shard_size`, with a manifest."""
    image = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image, format="PNG")
    keys = [f"s{i:04d}" for i in range(n)]
    with ShardWriter(folder, shard_size) as w:
        for key in keys:
            w.write(key, {"png": image.getvalue(), "cls": b"0"})
    w.write_manifest(source="toy", split="train", kind="images", image_size=8, channels=1, classes=("a",))
    return keys


def _hostile_folder(folder: Path, manifest: bool) -> list[str]:
    keys = write_image_shards(folder, n=12, shard_size=4)
    if not manifest:
        (folder / MANIFEST_NAME).unlink()  # the folder is then listed with *.tar
    (folder / HOSTILE).write_bytes(b"not a tar")
    return keys


def _read_all(spec: str, workers: int) -> tuple[list[str], dict[str, int]]:
    loader = make_loader(StreamConfig(shards=spec, batch_size=4, num_workers=workers, infinite=False,
                                      shuffle_buffer=0))
    keys = [k for batch in loader for k in batch.keys]
    return keys, loader.stats


def test_the_hostile_name_is_a_live_command_for_gopen(tmp_path: Path, monkeypatch) -> None:
    """Guards the test below: the same name handed to webdataset's gopen does run `touch`."""
    from webdataset.gopen import gopen

    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match="exit 127"), gopen(HOSTILE, "rb") as f:  # ".tar: not found"
        f.read()
    assert (tmp_path / MARKER).exists()


@pytest.mark.parametrize("spec", [".", "folder"])
def test_listed_shard_names_never_run(tmp_path: Path, monkeypatch, spec: str) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    keys = _hostile_folder(folder, manifest=False)
    monkeypatch.chdir(folder)
    shard_list = resolve_shards(spec if spec == "." else str(folder))
    assert HOSTILE in [Path(s.url).name for s in shard_list.shards]
    assert all(Path(s.url).is_absolute() and not s.remote for s in shard_list.shards)
    seen, stats = _read_all(spec if spec == "." else str(folder), workers=0 if spec == "." else 1)
    assert sorted(seen) == sorted(keys)  # the real shards are read in full
    assert stats["damaged_shards"] == 1  # the hostile file is read as a broken tar
    assert not (folder / MARKER).exists() and not (tmp_path / MARKER).exists()


def test_manifest_shard_names_never_run(tmp_path: Path, monkeypatch) -> None:
    keys = _hostile_folder(tmp_path, manifest=True)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    manifest["shards"].append({"name": HOSTILE, "num_samples": 0, "sha256": "", "num_bytes": 9})
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    monkeypatch.chdir(tmp_path)
    seen, stats = _read_all(".", workers=0)
    assert sorted(seen) == sorted(keys) and stats["damaged_shards"] == 1
    assert not (tmp_path / MARKER).exists()


def test_manifest_names_stay_inside_their_folder(tmp_path: Path) -> None:
    write_image_shards(tmp_path, n=4, shard_size=4)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    manifest["shards"][0]["name"] = "../elsewhere.tar"
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="points outside"):
        resolve_shards(tmp_path)


def test_typed_pipe_needs_allow_pipe(tmp_path: Path) -> None:
    keys = write_image_shards(tmp_path, n=4, shard_size=4)
    spec = f"pipe:cat {tmp_path}/shard-000000.tar"
    with pytest.raises(ValueError, match="data.allow_pipe: true"):
        make_loader(StreamConfig(shards=spec, num_workers=0))
    loader = make_loader(StreamConfig(shards=spec, batch_size=4, num_workers=0, infinite=False, allow_pipe=True))
    assert sorted(k for b in loader for k in b.keys) == sorted(keys)


def test_typed_local_paths_are_resolved_and_remote_urls_kept(tmp_path: Path, monkeypatch) -> None:
    write_image_shards(tmp_path, n=4, shard_size=4)
    monkeypatch.chdir(tmp_path)
    (ref,) = resolve_shards("shard-{000000..000000}.tar").shards
    assert ref.url == str(tmp_path.resolve() / "shard-000000.tar") and not ref.remote and ref.num_samples == 4
    (url,) = resolve_shards("https://example.invalid/shard-000000.tar").shards
    assert url.remote and url.url == "https://example.invalid/shard-000000.tar"


def test_open_shard_opens_odd_names_as_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / HOSTILE).write_bytes(b"x")
    with open_shard(HOSTILE) as f:  # relative name, remote=False: a plain open()
        assert f.read() == b"x"
    assert not (tmp_path / MARKER).exists()

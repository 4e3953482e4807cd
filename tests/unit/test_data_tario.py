"""The damage-tolerant tar reader against archives written by Python's tarfile and ShardWriter."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from ldm_system.data.stats import StreamStats
from ldm_system.data.tario import BLOCK, TarDamage, iter_members, read_samples, split_name
from ldm_system.data.writer import ShardWriter, ustar_header


def write_tar(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT) -> None:
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_reads_tarfile_archives_with_long_names(tmp_path: Path) -> None:
    long_key = "d/" + "x" * 150
    members = [("a.png", b"1"), ("a.cls", b"2"), (f"{long_key}.png", b"3" * 1000), ("b.txt", b"")]
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT):
        if fmt == tarfile.USTAR_FORMAT:
            members = [m for m in members if not m[0].startswith("d/")]
        write_tar(tmp_path / "t.tar", members, fmt)
        with open(tmp_path / "t.tar", "rb") as f:
            assert list(iter_members(f)) == members


def test_groups_members_into_samples(tmp_path: Path) -> None:
    write_tar(tmp_path / "t.tar", [("a.png", b"p"), ("a.cls", b"1"), ("dir/b.latent.npy", b"n"),
                                   ("__index__.json", b"{}"), ("noext", b"?"), ("c.TXT", b"t")])
    stats = StreamStats()
    samples = list(read_samples(str(tmp_path / "t.tar"), stats.record))
    assert [(s.key, s.entries) for s in samples] == [
        ("a", {"png": b"p", "cls": b"1"}),
        ("dir/b", {"latent.npy": b"n"}),
        ("c", {"txt": b"t"}),
    ]
    assert stats.counters() == {"corrupt_samples": 0, "damaged_shards": 0, "unreadable_shards": 0}


def test_truncation_drops_only_the_incomplete_sample(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, shard_size=10) as w:
        for i in range(4):
            w.write(f"s{i}", {"png": b"x" * 700, "cls": b"1"})
    full = (tmp_path / "shard-000000.tar").read_bytes()
    member_bytes = BLOCK + 2 * BLOCK  # header + 700 bytes padded to two blocks
    per_sample = member_bytes + 2 * BLOCK  # png member + cls member (header + one block)
    cases = {
        "inside data": per_sample * 2 + 600,  # in sample 2's png payload
        "at a member boundary": per_sample * 2 + member_bytes,  # sample 2 lacks its cls
        "end marker missing": per_sample * 4,  # all samples complete, no end-of-archive blocks
    }
    for what, cut in cases.items():
        path = tmp_path / "cut.tar"
        path.write_bytes(full[:cut])
        stats = StreamStats()
        keys = [s.key for s in read_samples(str(path), stats.record)]
        expected = ["s0", "s1"] if what != "end marker missing" else ["s0", "s1", "s2"]
        assert keys == expected, what
        assert stats.damaged_shards == 1, what


def test_bad_checksum_and_missing_file_are_counted(tmp_path: Path) -> None:
    data = bytearray(ustar_header("a.png", 1) + b"x" + bytes(BLOCK - 1) + bytes(2 * BLOCK))
    data[0:1] = b"b"  # the header no longer matches its checksum
    (tmp_path / "bad.tar").write_bytes(bytes(data))
    with open(tmp_path / "bad.tar", "rb") as f, pytest.raises(TarDamage, match="checksum"):
        list(iter_members(f))
    stats = StreamStats()
    assert list(read_samples(str(tmp_path / "missing.tar"), stats.record)) == []
    assert stats.unreadable_shards == 1


def test_split_name_follows_webdataset() -> None:
    assert split_name("a/b.c.d") == ("a/b", "c.d")
    assert split_name("x.PNG") == ("x", "png")
    assert split_name("noext") is None
    assert split_name("dir.v2/file") is None

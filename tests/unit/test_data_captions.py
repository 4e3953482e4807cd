"""Captions from the layouts users have (name.txt, name.caption, metadata.jsonl/csv) and tag shuffling."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from ldm_system.data.captions import shuffle_tags
from ldm_system.data.pack import pack
from ldm_system.data.rng import KeyedRandom


def captions_of(out: Path) -> dict[str, str]:
    got = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                if ext == "txt":
                    got[key.split("_", 1)[1]] = tar.extractfile(m).read().decode()
    return got


def folder(root: Path, names: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 10), (10, 20, 30)).save(root / n)


def test_every_layout_arrives_and_the_precedence_rule_holds(tmp_path: Path) -> None:
    src = tmp_path / "src"
    folder(src, ["a.png", "b.png", "c.jpg", "d.png", "e.png", "sub/f.png"])
    (src / "a.txt").write_text("from txt", encoding="utf-8")
    (src / "b.caption").write_text("from caption\n", encoding="utf-8")
    (src / "d.txt").write_text("txt wins", encoding="utf-8")
    (src / "d.caption").write_text("caption loses", encoding="utf-8")
    rows = [{"file_name": "c.jpg", "text": "from metadata"}, {"file_name": "d.png", "text": "metadata loses"},
            {"file_name": "sub/f.png", "text": "nested"}, {"file_name": "gone.png", "text": "no such file"}]
    (src / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    m = pack(str(src), tmp_path / "out", image_size=8)
    assert captions_of(tmp_path / "out") == {"a": "from txt", "b": "from caption", "c": "from metadata",
                                             "d": "txt wins", "e": "", "sub_f": "nested"}
    assert m.meta["captions"] == {"txt": 2, "caption": 1, "metadata": 2, "none": 1, "several_sources": 1}
    reasons = {s.path: s.reason for s in m.skipped}
    assert reasons == {"metadata.jsonl:4:gone.png": "metadata row names a missing file"}  # not a crash


def test_metadata_csv_with_another_column(tmp_path: Path) -> None:
    src = tmp_path / "src"
    folder(src, ["x.png", "y.png"])
    (src / "metadata.csv").write_text('file_name,prompt\nx.png,"a cat, sitting"\ny.png,a dog\n', encoding="utf-8")
    pack(str(src), tmp_path / "out", image_size=8, caption_column="prompt")
    assert captions_of(tmp_path / "out") == {"x": "a cat, sitting", "y": "a dog"}
    with pytest.raises(ValueError, match=r"metadata.csv row 2: no column 'text' \(pass --caption-column NAME\); "
                                         r"columns: file_name, prompt"):
        pack(str(src), tmp_path / "out2", image_size=8)
    assert not (tmp_path / "out2").exists()  # the error comes before anything is written


def test_bad_caption_files_are_listed_or_one_line_errors(tmp_path: Path) -> None:
    src = tmp_path / "src"
    folder(src, ["good.png", "latin.png"])
    (src / "good.txt").write_text("fine", encoding="utf-8")
    (src / "latin.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    m = pack(str(src), tmp_path / "out", image_size=8)
    assert captions_of(tmp_path / "out") == {"good": "fine"}
    assert {s.path: s.reason for s in m.skipped} == {"latin.png": "caption file latin.txt is not UTF-8 text"}
    (src / "metadata.jsonl").write_text('{"file_name": "good.png"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="metadata.jsonl row 1: no column 'text'"):
        pack(str(src), tmp_path / "o2", image_size=8)
    (src / "metadata.jsonl").write_bytes(b'{"file_name": "good.png", "text": "\xff"}\n')
    with pytest.raises(ValueError, match="metadata.jsonl: not UTF-8 text"):
        pack(str(src), tmp_path / "o3", image_size=8)
    (src / "metadata.jsonl").write_text("not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match="metadata.jsonl line 1: not JSON"):
        pack(str(src), tmp_path / "o4", image_size=8)


def test_tag_shuffle_keeps_the_first_tags_and_every_tag() -> None:
    caption = "mychar, solo, red hair, smiling, outdoors, looking at viewer"
    seen = set()
    for i in range(30):
        out = shuffle_tags(caption, keep=2, rng=KeyedRandom("t", i))
        tags = out.split(", ")
        assert tags[:2] == ["mychar", "solo"] and sorted(tags) == sorted(caption.split(", "))
        seen.add(out)
    assert len(seen) > 10
    assert shuffle_tags(caption, 2, KeyedRandom("t", 3)) == shuffle_tags(caption, 2, KeyedRandom("t", 3))
    assert shuffle_tags("a photo of a cat", 0, KeyedRandom("t", 0)) == "a photo of a cat"  # one tag: unchanged
    assert shuffle_tags("", 1, KeyedRandom("t", 0)) == ""


def test_stream_shuffles_tags_per_epoch_and_keeps_them_on_resume(tmp_path: Path) -> None:
    from ldm_system.data.stream import StreamConfig, make_loader

    src = tmp_path / "src"
    folder(src, [f"i{i}.png" for i in range(4)])
    for i in range(4):
        (src / f"i{i}.txt").write_text(f"trigger, t{i}a, t{i}b, t{i}c, t{i}d", encoding="utf-8")
    pack(str(src), tmp_path / "out", image_size=8)
    cfg = StreamConfig(shards=str(tmp_path / "out"), batch_size=4, num_workers=0, shuffle_tags=True, keep_tags=1)
    it = iter(make_loader(cfg))
    e0, e1 = next(it).captions, next(it).captions
    assert all(c.startswith("trigger, ") for c in e0 + e1)
    assert sorted(e0) != sorted(e1)  # a new order each epoch
    plain = next(iter(make_loader(StreamConfig(shards=str(tmp_path / "out"), batch_size=4, num_workers=0))))
    assert sorted(c.split(", ")[1] for c in plain.captions) == [f"t{i}a" for i in range(4)]

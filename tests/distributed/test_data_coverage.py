"""Exactly-once coverage with 2 real processes (ranks) x 2 DataLoader workers each.

The test starts this file twice as a script, with RANK / WORLD_SIZE in the environment like a
launcher would set them (no process group is needed: the loader takes rank and world size as
plain arguments). Each rank streams two datasets, one with more shards than the 4 reader streams
(whole shards per worker) and one with fewer (sample-level split), for two epochs, and writes the
keys it received; the parent checks that every epoch's union is every key exactly once.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORLD_SIZE = 2
WORKERS = 2
EPOCHS = 2
DATASETS = {
    "many_shards": [20, 17, 23, 9, 30, 31],  # 6 shards >= 4 streams: shard granularity
    "few_shards": [70, 60],  # 2 shards < 4 streams: sample granularity
}
TIMEOUT_S = 300


def write_shards(folder: Path, shard_sizes: list[int]) -> list[str]:
    from PIL import Image

    from ldm_system.data.writer import ShardWriter

    keys = []
    with ShardWriter(folder, shard_size=max(shard_sizes)) as w:
        for s, size in enumerate(shard_sizes):
            for j in range(size):
                buf = io.BytesIO()
                Image.new("L", (4, 4), (s * 31 + j) % 256).save(buf, format="PNG")
                key = f"s{s}_{j:03d}"
                w.write(key, {"png": buf.getvalue(), "cls": str(s).encode()})
                keys.append(key)
            w.end_shard()  # unequal shard sizes
    w.write_manifest(source="test", split="train", kind="images", image_size=4, channels=1)
    return keys


def rank_main(root: str) -> None:
    """Entry point of one rank (run as a script)."""
    from ldm_system.data.stream import StreamConfig, make_loader

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    result = {}
    for name in DATASETS:
        config = StreamConfig(shards=str(Path(root) / name), batch_size=7, num_workers=WORKERS,
                              shuffle_buffer=20, seed=11, infinite=False)
        loader = make_loader(config, rank=rank, world_size=world)
        epochs = [[k for batch in loader for k in batch.keys] for _ in range(EPOCHS)]
        result[name] = {"epochs": epochs, "stats": loader.stats, "epoch": loader.epoch,
                        "granularity": loader.plan.granularity}
    (Path(root) / f"rank{rank}.json").write_text(json.dumps(result))


@pytest.mark.distributed
def test_two_ranks_two_workers_see_every_sample_once(tmp_path: Path) -> None:
    keys = {name: write_shards(tmp_path / name, sizes) for name, sizes in DATASETS.items()}
    procs = []
    for rank in range(WORLD_SIZE):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(WORLD_SIZE),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, __file__, str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for p in procs:
        output, _ = p.communicate(timeout=TIMEOUT_S)
        assert p.returncode == 0, output.decode(errors="replace")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    for name, expected_granularity in (("many_shards", "shard"), ("few_shards", "sample")):
        orders = []
        for epoch in range(EPOCHS):
            per_rank = [r[name]["epochs"][epoch] for r in results]
            counts = Counter(k for keys_of_rank in per_rank for k in keys_of_rank)
            assert set(counts) == set(keys[name]), f"{name} epoch {epoch}: missing samples"
            assert set(counts.values()) == {1}, f"{name} epoch {epoch}: duplicates"
            assert all(per_rank), "every rank received data"
            orders.append(per_rank[0])
        assert orders[0] != orders[1]  # a new shuffle each epoch
        for r in results:
            assert r[name]["granularity"] == expected_granularity
            assert r[name]["epoch"] == EPOCHS and sum(r[name]["stats"].values()) == 0


if __name__ == "__main__":
    rank_main(sys.argv[1])

"""Who reads what: the deterministic split of one epoch over ranks and DataLoader workers.

There are G = world_size * workers_per_rank reader streams; stream g = rank * workers_per_rank +
worker. Every epoch e starts from one shard order, the same on every rank: a permutation seeded by
(seed, e) (or the natural order without shard shuffling). Then, with granularity

  * "shard"  (needs at least G shards): stream g reads shards order[g], order[g + G], ... whole.
    Cheapest, since each shard is read once; streams differ by at most one shard.
  * "sample" (any shard count): every stream reads all shards in order, numbers the samples it sees
    0, 1, 2, ... and keeps sample i when i % G == g. Costs G reads of the data, so it is the
    fallback for few shards; streams differ by at most one sample.
  * "auto": "shard" when there are at least G shards, else "sample".

Either way each sample of an epoch goes to exactly one stream. In "resampled" mode there is no
coordination: in its pseudo-epoch e, stream g reads ceil(num_shards / G) shards drawn with
replacement from rng(seed, e, g), so the stream never ends and samples may repeat.

Randomness comes from rng.seeded(...): reproducible across processes and runs.
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from ldm_system.data.rng import seeded

GRANULARITIES = ("auto", "shard", "sample")
T = TypeVar("T")


@dataclass(frozen=True)
class EpochPlan:
    num_shards: int
    num_streams: int  # G = world_size * workers_per_rank
    seed: int = 0
    shard_shuffle: bool = True
    granularity: str = "shard"  # resolved: "shard" or "sample"
    resampled: bool = False

    @classmethod
    def create(
        cls,
        num_shards: int,
        world_size: int,
        workers_per_rank: int,
        seed: int = 0,
        shard_shuffle: bool = True,
        granularity: str = "auto",
        resampled: bool = False,
    ) -> EpochPlan:
        if num_shards < 1:
            raise ValueError("no shards to stream")
        if world_size < 1 or workers_per_rank < 1:
            raise ValueError(f"world_size and workers must be >= 1 ({world_size}, {workers_per_rank})")
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        streams = world_size * workers_per_rank
        if granularity == "auto":
            granularity = "shard" if num_shards >= streams else "sample"
        if granularity == "shard" and num_shards < streams and not resampled:
            raise ValueError(
                f"granularity 'shard' needs at least world_size * workers = {streams} shards, "
                f"got {num_shards}; pack with a smaller shard size or use 'sample'/'auto'"
            )
        return cls(num_shards, streams, seed, shard_shuffle, granularity, resampled)

    def shard_order(self, epoch: int) -> list[int]:
        order = list(range(self.num_shards))
        if self.shard_shuffle:
            seeded("shards", self.seed, epoch).shuffle(order)
        return order

    def stream_shards(self, epoch: int, stream: int) -> list[int]:
        """Shard indices stream `stream` reads in `epoch`, in reading order."""
        if not 0 <= stream < self.num_streams:
            raise ValueError(f"stream {stream} outside 0..{self.num_streams - 1}")
        if self.resampled:
            rng = seeded("resample", self.seed, epoch, stream)
            draws = math.ceil(self.num_shards / self.num_streams)
            return [rng.randrange(self.num_shards) for _ in range(draws)]
        order = self.shard_order(epoch)
        if self.granularity == "shard":
            return order[stream :: self.num_streams]
        return order

    def keeps_sample(self, index: int, stream: int) -> bool:
        """Sample granularity: whether the `index`-th sample read belongs to `stream`."""
        if self.granularity == "shard" or self.resampled:
            return True
        return index % self.num_streams == stream


def shuffle_buffer(items: Iterable[T], size: int, rng: random.Random) -> Iterator[T]:
    """Streaming shuffle: fill `size` items, then emit a random one for each new arrival.

    Deterministic given `rng`, so replaying a stream reproduces its order exactly. size <= 1 keeps
    the input order.
    """
    if size <= 1:
        yield from items
        return
    buf: list[T] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        out, buf[j] = buf[j], item
        yield out
    rng.shuffle(buf)
    yield from buf

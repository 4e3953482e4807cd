"""Batches of one bucket: samples wait in a bucket per shape until it holds a full batch.

Bucketed shards (`ldm data pack --buckets`) store images of several (w, h) shapes; a batch must be
one shape. Each worker stream therefore keeps one open bucket per shape and hands out a batch the
moment a bucket reaches the batch size. Because the stream arrives shuffled (pack order, shard
shuffle, shuffle buffer), buckets fill at rates proportional to their share of the data and the
batches of different buckets interleave across the epoch instead of coming one bucket after another.

Small buckets (what is left in a bucket when the stream's epoch ends):
  * infinite mode (training by steps): carried into the next epoch. They stay in their bucket and
    leave in a full batch once later samples of the same shape arrive; every batch is full and no
    sample is dropped or repeated. A bucket rarer than one sample per batch per epoch is thus
    delivered a few epochs late, never lost.
  * single-epoch mode: emitted at the end of the epoch as smaller batches (dropped with
    drop_last), oldest bucket first, so that an epoch delivers every sample exactly once.
Square shards are the one-bucket case, which is exactly the behaviour before buckets. Several
shapes are accepted only from shards whose manifest lists buckets (`meta["buckets"]`); anywhere
else two shapes are a mistake (a folder packed without --image-size) and raise, as before.

Resume: what is waiting in buckets is part of the loader state, as the (epoch, position) of each
waiting sample in its worker stream. A resumed stream replays the cheap part of the stream (tar
bytes, no decoding) and decodes those positions again into their buckets (decoding is a function
of (seed, epoch, key)), so it continues with the very batches an uninterrupted run would give.
"""
from __future__ import annotations

from collections.abc import Iterator

from ldm_system.data.decode import Decoded

# More distinct shapes than this in one bucketed stream means images of arbitrary sizes.
MAX_OPEN_BUCKETS = 256
Slot = tuple[int, int]  # (epoch, position) of a sample in its worker stream


class BucketBatcher:
    def __init__(self, batch_size: int, bucketed: bool = False) -> None:
        self.batch_size = batch_size
        self.max_open = MAX_OPEN_BUCKETS if bucketed else 1
        self._open: dict[tuple[int, ...], list[tuple[Slot, Decoded]]] = {}

    def add(self, slot: Slot, sample: Decoded) -> list[Decoded] | None:
        """Put `sample` in its bucket; returns that bucket's samples when it is now a full batch."""
        shape = tuple(sample.image.shape)  # (C, H, W)
        bucket = self._open.setdefault(shape, [])
        bucket.append((slot, sample))
        if len(self._open) > self.max_open:
            raise ValueError(
                f"samples of {len(self._open)} different shapes {sorted(self._open)[:4]} in shards whose manifest "
                f"allows {self.max_open}; set image_size (and channels) in the stream config so that every image "
                "is resized to one shape, or pack with --image-size S --buckets"
            )
        if len(bucket) < self.batch_size:
            return None
        del self._open[shape]
        return [s for _, s in bucket]

    def pending(self) -> list[Slot]:
        """Slots of every sample waiting in a partly filled bucket, oldest first."""
        return sorted(slot for bucket in self._open.values() for slot, _ in bucket)

    def flush(self) -> Iterator[list[Decoded]]:
        """Empty every bucket as a (smaller) batch, the bucket holding the oldest sample first, so
        the order depends only on what is waiting (the same after a resume)."""
        while self._open:
            shape = min(self._open, key=lambda s: self._open[s][0][0])
            yield [s for _, s in self._open.pop(shape)]

    def __len__(self) -> int:
        return sum(len(b) for b in self._open.values())

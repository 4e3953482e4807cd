"""The worker side of the streaming loader: one deterministic stream of batches per worker.

For reader stream g (see partition.py) and epoch e the pipeline is

    shards of (e, g) -> tar samples [-> keep i % G == g] -> shuffle buffer rng(seed, e, g)
        -> number 1, 2, 3, ... (the stream position) -> decode + augment
        -> one bucket per shape -> batches of B from one bucket (bucket_batcher.py)

Everything up to the position numbering is a pure function of (seed, e, g, data), and decoding
happens after it, so a resumed worker replays the cheap part (tar bytes only) and skips exactly the
positions it had delivered before the checkpoint; a corrupt sample dropped at decode time cannot
shift the numbering. Batches are built inside the worker; each carries a small `meta` dict (which
worker, epoch and position of its last sample, skip counters) that the main-process loader uses to
track consumption.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ldm_system.data.bucket_batcher import BucketBatcher, Slot
from ldm_system.data.decode import CorruptSample, Decoded, DecodeOptions, decode_sample
from ldm_system.data.partition import EpochPlan, shuffle_buffer
from ldm_system.data.rng import seeded
from ldm_system.data.shardlist import ShardRef
from ldm_system.data.stats import StreamStats
from ldm_system.data.tario import RawSample, read_samples
from ldm_system.data.transforms import uint8_to_pm1

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """A training batch; readers use its attributes (`batch.images`, `batch.labels`, `batch.captions`).
    `keys` are the samples' WebDataset keys.

    images: float32 (B, C, H, W), in [-1, 1] for image shards, the stored latents for latent shards.
    labels: int64 (B,), -1 where a sample has no label.
    placements: per sample, the raw `json` record of a bucketed pack (original size, crop offsets:
    what size conditioning needs), b"" where there is none; empty when no sample has one.
    """

    images: torch.Tensor
    labels: torch.Tensor
    captions: list[str]
    keys: list[str]
    placements: list[bytes] = field(default_factory=list)
    text: torch.Tensor | None = None  # (B, L, D) cached text-encoder states, when the shards hold them

    @property
    def size(self) -> int:
        return len(self.keys)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.images.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.captions,
            self.keys,
            self.placements,
            None if self.text is None else self.text.to(device, non_blocking=non_blocking),
        )


@dataclass(frozen=True)
class StreamPosition:
    """How far one worker stream got: its first `position` samples of `epoch` were delivered, except
    those listed in `pending`, which wait in partly filled buckets (possibly since an earlier epoch)."""

    epoch: int = 0
    position: int = 0
    done: bool = False  # single-epoch mode: the stream delivered all of `epoch`
    pending: tuple[Slot, ...] = ()  # (epoch, position) of each sample waiting in a bucket


def collate(samples: list[Decoded]) -> Batch:
    shapes = {tuple(d.image.shape) for d in samples}
    if len(shapes) > 1:
        raise ValueError(
            f"samples in one batch have different shapes {sorted(shapes)}; set image_size "
            "(and channels) in the stream config so that every image is resized to one shape"
        )
    images = torch.stack([d.image for d in samples])  # (B, C, H, W)
    if images.dtype == torch.uint8:
        images = uint8_to_pm1(images)
    return Batch(
        images=images,
        labels=torch.tensor([d.label for d in samples], dtype=torch.long),
        captions=[d.caption for d in samples],
        keys=[d.key for d in samples],
        placements=[d.placement for d in samples] if any(d.placement for d in samples) else [],
        text=torch.stack([d.text for d in samples]) if all(d.text is not None for d in samples) else None,
    )


class ShardStream(IterableDataset):
    """Yields `(Batch | None, meta)`; `None` batches are end-of-stream markers carrying stats."""

    def __init__(
        self,
        shards: tuple[ShardRef, ...],
        plan: EpochPlan,
        rank: int,
        workers_per_rank: int,
        decode: DecodeOptions,
        batch_size: int,
        shuffle_buffer: int,
        infinite: bool,
        drop_last: bool,
        start: tuple[StreamPosition, ...],
        rotation: int = 0,
        bucketed: bool = False,
    ) -> None:
        super().__init__()
        if len(start) != workers_per_rank:
            raise ValueError(f"need {workers_per_rank} start positions, got {len(start)}")
        self.shards = shards
        self.plan = plan
        self.rank = rank
        self.workers_per_rank = workers_per_rank
        self.decode = decode
        self.batch_size = batch_size
        self.buffer_size = shuffle_buffer
        self.infinite = infinite
        self.drop_last = drop_last
        self.start = start
        self.rotation = rotation
        self.bucketed = bucketed  # several shapes allowed (the manifest lists buckets)

    def __iter__(self) -> Iterator[tuple[Batch | None, dict[str, Any]]]:
        info = get_worker_info()
        physical = 0 if info is None else info.id
        # The DataLoader always asks worker 0 first; rotating the worker -> stream map makes a
        # resumed run continue with the stream that was next in line when the state was saved.
        worker = (physical + self.rotation) % self.workers_per_rank
        return self.iter_worker(worker)

    def _raw(self, epoch: int, stream: int, stats: StreamStats) -> Iterator[RawSample]:
        index = 0
        for shard in self.plan.stream_shards(epoch, stream):
            problems: list[tuple[str, str]] = []
            ref = self.shards[shard]
            for raw in read_samples(ref.url, lambda *p: problems.append(p), remote=ref.remote):
                keep = self.plan.keeps_sample(index, stream)
                index += 1
                if keep:
                    yield raw
            # With sample granularity every stream reads every shard; the problem is counted once,
            # by the stream that would have received the first sample lost to it.
            if problems and self.plan.keeps_sample(index, stream):
                stats.record(*problems[0])
    def _shuffled(self, epoch: int, stream: int, stats: StreamStats) -> Iterator[RawSample]:
        rng = seeded("buffer", self.plan.seed, epoch, stream)
        return shuffle_buffer(self._raw(epoch, stream, stats), self.buffer_size, rng)

    def _restore(self, buckets: BucketBatcher, epoch: int, stream: int, wanted: set[int]) -> None:
        """Decode again the samples of an earlier `epoch` that waited in buckets at the checkpoint."""
        quiet = StreamStats(muted=True)  # these were counted before the checkpoint
        for position, raw in enumerate(self._shuffled(epoch, stream, quiet), 1):
            if position in wanted:
                buckets.add((epoch, position), decode_sample(raw, self.decode, epoch))
                if position == max(wanted):
                    return

    def iter_worker(self, worker: int) -> Iterator[tuple[Batch | None, dict[str, Any]]]:
        """Items of one worker stream. meta["event"] is "batch", "done" (single-epoch mode: the
        epoch is finished) or "empty" (infinite mode: an epoch had no samples for this stream;
        the stream goes on with the next epoch, and the loader raises if nothing else comes).
        meta["pending"] lists the samples left waiting in buckets after this item."""
        stream = self.rank * self.workers_per_rank + worker
        stats = StreamStats()
        start = self.start[worker]
        buckets = BucketBatcher(self.batch_size, self.bucketed)

        def meta(event: str, epoch: int, position: int) -> dict[str, Any]:
            return {"worker": worker, "event": event, "epoch": epoch, "position": position,
                    "pending": buckets.pending(), "stats": stats.counters()}

        if start.done and not self.infinite:
            yield None, meta("done", start.epoch, start.position)
            return
        epoch, skip = start.epoch, start.position
        # Samples carried over from earlier epochs go back into their buckets first (oldest first).
        for old in sorted({e for e, _ in start.pending if e < epoch}):
            self._restore(buckets, old, stream, {p for e, p in start.pending if e == old})
        wanted = {p for e, p in start.pending if e == epoch}
        last = (epoch, skip)  # (epoch, position) of the newest sample put in a bucket
        while True:
            stats.muted = skip > 0  # replayed samples were counted before the checkpoint
            seen = 0
            for position, raw in enumerate(self._shuffled(epoch, stream, stats), 1):
                seen += 1
                if position <= skip:
                    stats.muted = position < skip
                    if position in wanted:  # delivered to a bucket before the checkpoint, not to the caller
                        buckets.add((epoch, position), decode_sample(raw, self.decode, epoch))
                    continue
                try:
                    sample = decode_sample(raw, self.decode, epoch)
                except CorruptSample as exc:
                    stats.record("corrupt_samples", f"skipping corrupt sample in {raw.url}: {exc}")
                    continue
                last = (epoch, position)
                full = buckets.add(last, sample)
                if full is not None:
                    yield collate(full), meta("batch", *last)
            stats.muted = False
            if not self.infinite:
                # Single epoch: what is left in the buckets leaves now, as smaller batches.
                for rest in buckets.flush():
                    if not self.drop_last:
                        yield collate(rest), meta("batch", epoch, seen)
                yield None, meta("done", epoch, seen)
                return
            if seen == 0:
                for rest in buckets.flush():  # never hold samples back behind an empty epoch
                    yield collate(rest), meta("batch", *last)
                yield None, meta("empty", epoch + 1, 0)
            # Infinite: partly filled buckets are carried into the next epoch.
            epoch, skip, wanted = epoch + 1, 0, set()

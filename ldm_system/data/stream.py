"""The streaming loader: WebDataset shards -> batches, split exactly once over ranks and workers,
resumable in the middle of an epoch.

    loader = make_loader(StreamConfig(shards="data/fmnist", batch_size=128), rank, world_size)
    for batch in loader:   # batch.images (B, C, H, W) in [-1, 1], .labels (B,) int64, .captions list[str]
        ...
    state = loader.state_dict()              # JSON-serialisable; save one per rank
    loader.load_state_dict(state)            # continues right after the last batch handed out

The rank and world size are passed explicitly (the engine reads them from accelerate); the loader
never goes through `accelerator.prepare`. Each rank runs `num_workers` DataLoader workers, and
worker w of rank r reads stream r * num_workers + w of the split described in partition.py.

Consumption is tracked here, on the main process, from the batches actually handed to the caller:
prefetched batches that were never consumed are not counted, so a resumed run neither repeats nor
skips a sample. Resuming requires the same shards, seed, world size and number of workers.

Modes: `infinite=True` (default) rolls from epoch e into e + 1 inside each worker, for training by
steps; a batch may then mix the end of one epoch with the start of the next. `infinite=False` makes
each `iter(loader)` one epoch, after which the loader moves to the next epoch by itself. In that
mode ranks can receive a few samples more or less than each other (see partition.py).
`resampled=True` draws shards with replacement instead (an endless stream, no exactly-once).

Buckets: from shards whose manifest lists aspect-ratio buckets (`ldm data pack --buckets`, or
latents encoded from them) and without a stream `image_size`, every batch holds one bucket (one
shape); ranks may train different buckets in the same step. Small buckets are carried into the
next epoch in infinite mode and emitted as smaller batches at the end of a single-epoch pass
(bucket_batcher.py); the samples waiting in buckets are part of `state_dict()`.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import DataLoader

from ldm_system.data.decode import DecodeOptions
from ldm_system.data.partition import GRANULARITIES, EpochPlan
from ldm_system.data.stream_worker import Batch, ShardStream, StreamPosition
from ldm_system.data.shardlist import resolve_shards
from ldm_system.data.stats import StreamStats
from ldm_system.data.transforms import CHANNEL_MODES, CROP_MODES

logger = logging.getLogger(__name__)

STATE_VERSION = 1
# Infinite mode gives up when every worker of a rank had this many empty epochs in a row.
EMPTY_EPOCHS_LIMIT = 3


@dataclass(frozen=True)
class StreamConfig:
    """Options of the streaming loader; YAML keys are these field names (a run config's `data:` section)."""

    shards: str  # folder with manifest.json, manifest path, or pattern "out/shard-{000000..000009}.tar"
    batch_size: int = 64
    num_workers: int = 2  # DataLoader workers per rank; 0 reads in the main process
    image_size: int | None = None  # resize shorter side + crop to this square; None keeps stored size
    crop: str = "center"  # "center" or "random"
    flip: bool = False  # random horizontal flip (p = 0.5), images and latents
    channels: int | None = None  # 1 or 3 to force; None keeps what the shards hold
    shuffle_buffer: int = 1000  # samples; 0 or 1 disables the sample shuffle
    shard_shuffle: bool = True  # shard order permuted per epoch with seed + epoch
    seed: int = 0
    infinite: bool = True  # roll over epochs (train by steps); False = one epoch per iter()
    resampled: bool = False  # draw shards with replacement; endless, no exactly-once
    drop_last: bool = False  # single-epoch mode: drop each worker's last partial batch
    granularity: str = "auto"  # "auto" | "shard" | "sample", see partition.py
    sample_posterior: bool = False  # latent shards with mean/logvar: draw z instead of latent.npy
    prefetch_factor: int = 2  # batches prefetched per worker
    # Let `shards` be `pipe:<shell command>` (webdataset runs it through a shell). Off by default:
    # only a spec typed by the user can be a pipe, never a name listed from a folder or manifest.
    allow_pipe: bool = False
    # Comma-separated captions: shuffle the tags after the first keep_tags each epoch (kohya style).
    shuffle_tags: bool = False
    keep_tags: int = 0

    def __post_init__(self) -> None:
        positive = {"batch_size": self.batch_size, "prefetch_factor": self.prefetch_factor}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"StreamConfig.{name} must be >= 1, got {value}")
        for name, value in {"num_workers": self.num_workers, "shuffle_buffer": self.shuffle_buffer,
                            "seed": self.seed, "keep_tags": self.keep_tags}.items():
            if value < 0:
                raise ValueError(f"StreamConfig.{name} must be >= 0, got {value}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"StreamConfig.image_size must be >= 1 or null, got {self.image_size}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"StreamConfig.crop must be one of {CROP_MODES}, got {self.crop!r}")
        if self.crop == "random" and self.image_size is None:
            raise ValueError("StreamConfig.crop='random' needs image_size (the crop's side)")
        if self.channels is not None and self.channels not in CHANNEL_MODES:
            raise ValueError(f"StreamConfig.channels must be 1, 3 or null, got {self.channels!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"StreamConfig.granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.resampled and self.granularity == "sample":
            raise ValueError("resampled mode reads whole shards; use granularity 'auto' or 'shard'")


class StreamLoader:
    """Iterable of `Batch` for one rank; see the module docstring."""

    def __init__(self, config: StreamConfig, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.shard_list = resolve_shards(config.shards, allow_pipe=config.allow_pipe)
        self.workers = max(1, config.num_workers)  # streams per rank; 0 workers = 1 in-process stream
        self.plan = EpochPlan.create(
            num_shards=len(self.shard_list.shards),
            world_size=world_size,
            workers_per_rank=self.workers,
            seed=config.seed,
            shard_shuffle=config.shard_shuffle,
            granularity=config.granularity,
            resampled=config.resampled,
        )
        self.decode = DecodeOptions(
            image_size=config.image_size,
            crop=config.crop,
            flip=config.flip,
            channels=config.channels,
            sample_posterior=config.sample_posterior,
            seed=config.seed,
            shuffle_tags=config.shuffle_tags,
            keep_tags=config.keep_tags,
        )
        manifest = self.shard_list.manifest
        # Shapes of several buckets are expected only from shards packed (or encoded) with buckets;
        # a stream image_size makes every sample one square again.
        self.bucketed = manifest is not None and "buckets" in manifest.meta and config.image_size is None
        self._reset_epoch(0)
        self._samples_consumed = 0
        self._stats_base = StreamStats().counters()
        self._stats_live: dict[int, dict[str, int]] = {}

    # -- progress -----------------------------------------------------------------------------
    def _reset_epoch(self, epoch: int) -> None:
        self._positions = [StreamPosition(epoch) for _ in range(self.workers)]
        self._next_worker = 0

    @property
    def epoch(self) -> int:
        """The oldest epoch still being delivered on this rank."""
        return min(p.epoch for p in self._positions)

    @property
    def samples_consumed(self) -> int:
        return self._samples_consumed

    @property
    def num_samples(self) -> int | None:
        """Samples per epoch over all ranks, when the shard counts are known."""
        return self.shard_list.num_samples

    @property
    def stats(self) -> dict[str, int]:
        """Skip counters on this rank: corrupt_samples, damaged_shards, unreadable_shards."""
        return StreamStats.total([self._stats_base, *self._stats_live.values()])

    # -- iteration ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        # Infinite: worker streams roll over epochs themselves, so the run never ends.
        return self._run() if self.config.infinite else self._iter_epoch()

    def _iter_epoch(self) -> Iterator[Batch]:
        yield from self._run()
        # Reached only when every worker finished the epoch (not when the caller stops early).
        self._reset_epoch(self.epoch + 1)

    def _dataset(self) -> ShardStream:
        return ShardStream(
            shards=self.shard_list.shards,
            plan=self.plan,
            rank=self.rank,
            workers_per_rank=self.workers,
            decode=self.decode,
            batch_size=self.config.batch_size,
            shuffle_buffer=self.config.shuffle_buffer,
            infinite=self.config.infinite,
            drop_last=self.config.drop_last,
            start=tuple(self._positions),
            rotation=self._next_worker,
            bucketed=self.bucketed,
        )

    def _run(self) -> Iterator[Batch]:
        # Counters of an earlier iterator's workers become the base; new workers start from zero.
        self._stats_base = self.stats
        self._stats_live = {}
        dataset = self._dataset()
        if self.config.num_workers == 0:
            items: Any = dataset.iter_worker(self._next_worker)
        else:
            items = DataLoader(
                dataset,
                batch_size=None,
                num_workers=self.config.num_workers,
                collate_fn=_identity,
                prefetch_factor=self.config.prefetch_factor,
            )
        empty_in_a_row = 0
        for batch, meta in items:
            worker, event = meta["worker"], meta["event"]
            self._stats_live[worker] = meta["stats"]
            self._next_worker = (worker + 1) % self.workers
            if event == "done":
                self._positions[worker] = replace(self._positions[worker], done=True)
                continue
            pending = tuple((int(e), int(p)) for e, p in meta["pending"])
            self._positions[worker] = StreamPosition(meta["epoch"], meta["position"], pending=pending)
            if event == "empty":
                empty_in_a_row += 1
                if empty_in_a_row >= EMPTY_EPOCHS_LIMIT * self.workers:
                    raise RuntimeError(
                        f"rank {self.rank} received no samples in {empty_in_a_row} consecutive "
                        f"worker epochs: the shards in {self.config.shards!r} are unreadable, or "
                        f"there are fewer samples than world_size * workers; skip counters: {self.stats}"
                    )
                continue
            empty_in_a_row = 0
            self._samples_consumed += batch.size
            yield batch

    # -- checkpointing ------------------------------------------------------------------------
    def _fingerprint(self) -> dict[str, Any]:
        return {
            "seed": self.config.seed,
            "world_size": self.world_size,
            "rank": self.rank,
            "num_workers": self.workers,
            "num_shards": len(self.shard_list.shards),
            "resampled": self.config.resampled,
            "granularity": self.plan.granularity,
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable progress of this rank. Save one per rank."""
        return {
            "version": STATE_VERSION,
            **self._fingerprint(),
            "epoch": self.epoch,
            "samples_consumed": self._samples_consumed,
            "next_worker": self._next_worker,
            "streams": [
                {"epoch": p.epoch, "position": p.position, "done": p.done,
                 "pending": [list(s) for s in p.pending]}  # samples waiting in partly filled buckets
                for p in self._positions
            ],
            "stats": self.stats,
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Continue where `state` was taken. With a different seed, world size, worker count or
        shard count an exact resume is impossible: strict=True raises; strict=False restarts the
        saved epoch from its beginning (so samples of that epoch can repeat) with a warning."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} != {STATE_VERSION}")
        expected = self._fingerprint()
        diffs = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        self._samples_consumed = int(state["samples_consumed"])
        self._stats_base = {**StreamStats().counters(), **state.get("stats", {})}
        self._stats_live = {}
        if diffs:
            detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diffs.items())
            if strict:
                raise ValueError(f"cannot resume the data stream exactly ({detail})")
            logger.warning("data stream restarts epoch %d from its beginning (%s)", state["epoch"], detail)
            self._reset_epoch(int(state["epoch"]))
            return
        self._positions = [
            StreamPosition(int(s["epoch"]), int(s["position"]), bool(s["done"]),
                           tuple((int(e), int(p)) for e, p in s.get("pending", [])))
            for s in state["streams"]
        ]
        self._next_worker = int(state["next_worker"])


def _identity(item: Any) -> Any:
    return item


def make_loader(config: StreamConfig, rank: int = 0, world_size: int = 1) -> StreamLoader:
    """The loader factory the trainer calls with its own rank and world size."""
    return StreamLoader(config, rank=rank, world_size=world_size)


def first_images(shards: str, n: int, with_labels: bool = False):
    """The first n images of a shard set in shard order (no shuffling, one pass): a fixed held-out
    set for evaluation. (n, C, H, W) float32 in [-1, 1] (and (n,) labels with `with_labels`)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    cfg = StreamConfig(shards=shards, batch_size=min(n, 100), num_workers=0, shuffle_buffer=0, shard_shuffle=False,
                       infinite=False)
    images, labels, have = [], [], 0
    for batch in make_loader(cfg):
        images.append(batch.images)
        labels.append(batch.labels)
        have += batch.images.shape[0]
        if have >= n:
            break
    if not images:
        raise ValueError(f"{shards}: no images")
    x = torch.cat(images)[:n].float()
    return (x, torch.cat(labels)[:n]) if with_labels else x

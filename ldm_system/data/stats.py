"""Counters of what the streaming loader had to skip, exposed as `loader.stats`.

Each DataLoader worker keeps its own `StreamStats`; a snapshot travels with every batch it sends,
and the loader on the main process sums the latest snapshot of each worker stream.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields

logger = logging.getLogger(__name__)


@dataclass
class StreamStats:
    """Skip counters. `muted` silences counting while a resumed stream replays what it had
    already delivered before the checkpoint (those events were counted in the first run)."""

    corrupt_samples: int = 0  # undecodable image/latent bytes, bad label text, missing payload
    damaged_shards: int = 0  # truncated or corrupt tar: the rest of that shard is skipped
    unreadable_shards: int = 0  # the shard could not be opened at all
    muted: bool = False

    def record(self, counter: str, message: str) -> None:
        if self.muted:
            return
        setattr(self, counter, getattr(self, counter) + 1)
        logger.warning(message)

    def counters(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "muted"}

    @classmethod
    def total(cls, parts: list[dict[str, int]]) -> dict[str, int]:
        out = {f.name: 0 for f in fields(cls) if f.name != "muted"}
        for part in parts:
            for k, v in part.items():
                out[k] += v
        return out

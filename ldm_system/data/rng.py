"""Deterministic randomness for the data pipeline, derived from names rather than global state.

`seeded(*parts)` gives a `random.Random` for long streams (shard order, shuffle buffer). Python
hashes str seeds with SHA-512, so the result depends on `parts` only: not on the process, the
worker or PYTHONHASHSEED.

`KeyedRandom(*parts)` is for the handful of draws one sample needs (crop offsets, flip, a noise
seed). Seeding a Mersenne Twister per sample costs more than decoding a small PNG, so it hashes
(parts, draw counter) with BLAKE2b instead: about a microsecond per draw.
"""
from __future__ import annotations

import hashlib
import random

_UNIT = 2.0**-64  # 64 random bits -> [0, 1)


def seeded(*parts: object) -> random.Random:
    """A stdlib RNG determined by `parts` alone, e.g. seeded("buffer", seed, epoch, stream)."""
    return random.Random(":".join(str(p) for p in parts))


class KeyedRandom:
    """The `random()`, `randint()` and `getrandbits(64)` subset of `random.Random`, from a hash."""

    def __init__(self, *parts: object) -> None:
        self._base = ":".join(str(p) for p in parts).encode()
        self._count = 0

    def getrandbits(self, k: int = 64) -> int:
        if not 0 < k <= 64:
            raise ValueError(f"KeyedRandom draws at most 64 bits, asked for {k}")
        self._count += 1
        digest = hashlib.blake2b(self._base + b"#%d" % self._count, digest_size=8).digest()
        return int.from_bytes(digest, "little") >> (64 - k)

    def random(self) -> float:
        return self.getrandbits(64) * _UNIT

    def randint(self, a: int, b: int) -> int:
        """Uniform in [a, b]; the modulo bias is below 2**-40 for spans under 2**24."""
        if b < a:
            raise ValueError(f"empty range [{a}, {b}]")
        return a + self.getrandbits(64) % (b - a + 1)

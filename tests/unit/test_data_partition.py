"""The per-epoch split of shards and samples over ranks x workers, and the shuffle buffer."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from ldm_system.data.partition import EpochPlan, shuffle_buffer
from ldm_system.data.rng import KeyedRandom, seeded


def assignment(plan: EpochPlan, epoch: int, shard_sizes: list[int]) -> Counter:
    """(shard, index-in-shard) -> how many streams take it, simulating every stream's reads."""
    taken: Counter = Counter()
    for stream in range(plan.num_streams):
        i = 0
        for shard in plan.stream_shards(epoch, stream):
            for j in range(shard_sizes[shard]):
                if plan.keeps_sample(i, stream):
                    taken[(shard, j)] += 1
                i += 1
    return taken


@pytest.mark.parametrize("num_shards,world,workers", [(7, 2, 2), (4, 2, 2), (3, 2, 2), (1, 3, 1), (10, 1, 3)])
def test_every_sample_is_taken_exactly_once(num_shards: int, world: int, workers: int) -> None:
    sizes = [5 + (s % 3) for s in range(num_shards)]  # unequal shards
    plan = EpochPlan.create(num_shards, world, workers, seed=4)
    assert plan.granularity == ("shard" if num_shards >= world * workers else "sample")
    for epoch in range(3):
        taken = assignment(plan, epoch, sizes)
        assert set(taken.values()) == {1}
        assert len(taken) == sum(sizes)


def test_shard_order_depends_on_seed_and_epoch_only() -> None:
    a = EpochPlan.create(50, 2, 2, seed=1)
    b = EpochPlan.create(50, 4, 1, seed=1)  # another split of the same epoch order
    assert a.shard_order(0) == b.shard_order(0)
    assert a.shard_order(0) != a.shard_order(1)
    assert a.shard_order(0) != EpochPlan.create(50, 2, 2, seed=2).shard_order(0)
    assert sorted(a.shard_order(3)) == list(range(50))
    fixed = EpochPlan.create(5, 1, 1, shard_shuffle=False)
    assert fixed.shard_order(0) == fixed.shard_order(7) == [0, 1, 2, 3, 4]


def test_shard_granularity_needs_enough_shards() -> None:
    with pytest.raises(ValueError, match="needs at least world_size \\* workers = 4 shards"):
        EpochPlan.create(3, 2, 2, granularity="shard")
    with pytest.raises(ValueError, match="granularity must be one of"):
        EpochPlan.create(3, 2, 2, granularity="file")
    with pytest.raises(ValueError, match="no shards"):
        EpochPlan.create(0, 1, 1)


def test_resampled_draws_with_replacement() -> None:
    plan = EpochPlan.create(3, 2, 2, seed=0, resampled=True)
    draws = [plan.stream_shards(e, s) for e in range(20) for s in range(4)]
    assert all(len(d) == 1 for d in draws)  # ceil(3 / 4) shards per stream per pseudo-epoch
    assert {d[0] for d in draws} == {0, 1, 2}
    assert plan.stream_shards(5, 1) == plan.stream_shards(5, 1)


def test_shuffle_buffer_is_a_deterministic_permutation() -> None:
    items = list(range(100))
    out = list(shuffle_buffer(items, 10, seeded("x", 1)))
    assert sorted(out) == items and out != items
    assert out == list(shuffle_buffer(items, 10, seeded("x", 1)))
    assert out != list(shuffle_buffer(items, 10, seeded("x", 2)))
    assert list(shuffle_buffer(items, 0, random.Random(0))) == items
    assert sorted(shuffle_buffer(range(3), 10, random.Random(0))) == [0, 1, 2]  # fewer than size


def test_keyed_random_is_deterministic_and_roughly_uniform() -> None:
    a = KeyedRandom("augment", 0, 1, "key")
    draws = [a.random() for _ in range(2000)]
    b = KeyedRandom("augment", 0, 1, "key")
    assert draws == [b.random() for _ in range(2000)]
    assert draws[:5] != [KeyedRandom("augment", 0, 2, "key").random() for _ in range(5)]
    assert all(0.0 <= x < 1.0 for x in draws) and abs(sum(draws) / len(draws) - 0.5) < 0.03
    ints = Counter(KeyedRandom("i", n).randint(0, 3) for n in range(4000))
    assert set(ints) == {0, 1, 2, 3} and min(ints.values()) > 850

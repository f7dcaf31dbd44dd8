"""The minibatch sampler: per-epoch order from (seed, epoch), and shards for DDP that
cover every cell exactly once with the same number of steps on every rank."""

from __future__ import annotations

import numpy as np
import pytest

from mvae_sc.data.loader import ShuffledBatches


@pytest.mark.parametrize(
    ("n", "batch_size", "world"), [(10, 4, 1), (11, 2, 3), (1000, 128, 2), (5, 8, 4)]
)
def test_every_cell_once_per_epoch_across_ranks(n, batch_size, world):
    shards = [
        ShuffledBatches(n, batch_size, seed=3, rank=r, world_size=world) for r in range(world)
    ]
    for epoch in range(2):
        seen = []
        for sampler in shards:
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) <= len(sampler) and all(len(b) <= batch_size for b in batches)
            seen.extend(i for b in batches for i in b)
        assert sorted(seen) == list(range(n))
    # every rank runs the same number of steps (DDP needs them in lock-step)
    assert len({len(s) for s in shards}) == 1


def test_order_depends_only_on_seed_and_epoch():
    a, b = ShuffledBatches(50, 8, seed=1), ShuffledBatches(50, 8, seed=1)
    first = list(a)
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first  # a new order every epoch
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(ShuffledBatches(50, 8, seed=2)) != first


def test_drop_last_single_process():
    batches = list(ShuffledBatches(10, 4, drop_last=True))
    assert [len(b) for b in batches] == [4, 4]
    assert len(set(np.concatenate(batches))) == 8

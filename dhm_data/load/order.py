"""Sample order of an epoch and its partition over ranks.

Shuffling (:func:`epoch_order`): the samples of each shard are cut into blocks
of ``block_size`` consecutive samples; the blocks of all shards are shuffled;
then the samples are shuffled within consecutive windows of ``window``
positions.  A batch thus mixes samples of up to ``window / block_size``
blocks from different shards, while a window touches only that many
contiguous regions of the files (page-cache and disk friendly).
``block_size=1`` gives a uniform random permutation.  The order depends only
on (seed, epoch, shard lengths, block_size, window): never on the number of
workers.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dhm_data.errors import LoaderError


def epoch_order(lengths, seed: int, epoch: int, shuffle: bool = True, block_size: int = 16,
                window: int = 1024) -> np.ndarray:
    """Global sample order of one epoch (same on every rank and worker).

    ``lengths``: samples per shard (global index = shard start + local index).
    Blocks of ``block_size`` consecutive samples of one shard are shuffled, then
    samples within consecutive windows of ``window`` positions.
    """
    lengths = np.asarray(lengths, np.int64)
    n = int(lengths.sum())
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    if block_size < 1 or window < 1:
        raise LoaderError(f"block_size and window must be >= 1, got {block_size} and {window}")
    rng = np.random.default_rng([int(seed), int(epoch)])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    b_start = np.concatenate([s + np.arange(0, L, block_size) for s, L in zip(starts, lengths)]) if n else np.zeros(0, np.int64)
    b_end = np.minimum(b_start + block_size, np.repeat(starts + lengths, -(-lengths // block_size)))
    perm = rng.permutation(len(b_start))
    b_start, b_len = b_start[perm], (b_end - b_start)[perm]
    first = np.concatenate([[0], np.cumsum(b_len)[:-1]])
    order = np.repeat(b_start - first, b_len) + np.arange(n)
    keys = rng.random(n)
    win = np.arange(n) // window
    return order[np.lexsort((keys, win))]


def rank_order(order: np.ndarray, rank: int, world_size: int, batch_size: int, drop_last: bool) -> np.ndarray:
    """This rank's slice of an epoch order.

    Every rank gets the same number of samples: ``drop_last=False`` pads the
    order by wrapping around to ``ceil(n / world_size) * world_size`` (at most
    ``world_size - 1`` samples appear twice, as DistributedSampler does), so the
    ranks together cover every sample; ``drop_last=True`` keeps
    ``floor(n / world_size / batch_size) * batch_size`` per rank (only full
    batches; the dropped tail changes with the epoch).  Rank ``r`` takes the
    ``r``-th contiguous slab.
    """
    n = len(order)
    if drop_last:
        per = (n // world_size) // batch_size * batch_size
    else:
        per = -(-n // world_size)
        need = per * world_size
        if need > n:
            order = np.concatenate([order, np.resize(order, need - n)]) if n else order
    return order[rank * per:(rank + 1) * per]


class OrderKey(NamedTuple):
    """Everything one rank's sample order of one epoch depends on, besides
    the shard lengths (the loader sends it to its workers with each task)."""

    seed: int
    epoch: int
    shuffle: bool
    block_size: int
    window: int
    rank: int
    world_size: int
    batch_size: int
    drop_last: bool


def loader_order(lengths, key: OrderKey) -> np.ndarray:
    """The sample indices one rank reads in one epoch (:func:`epoch_order`,
    then :func:`rank_order`).  The loader and each of its workers compute it
    from ``key`` alone, so a task names a batch by its index
    (:func:`batch_indices`)."""
    full = epoch_order(lengths, key.seed, key.epoch, key.shuffle, key.block_size, key.window)
    return rank_order(full, key.rank, key.world_size, key.batch_size, key.drop_last)


def batch_indices(order: np.ndarray, b: int, batch_size: int) -> np.ndarray:
    """Batch ``b`` of an epoch's ``order``: positions ``[b * batch_size, (b + 1) * batch_size)``."""
    return order[b * batch_size:(b + 1) * batch_size]

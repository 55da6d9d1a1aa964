"""Reading built shards as numpy batches for training: ``ShardDataset``,
``Loader`` (ordering, rank partitions, worker pool) and ``HorizontalFlip``.

May import: :mod:`dhm_data.errors`, :mod:`dhm_data.geometry`,
:mod:`dhm_data.prepare` (to re-render a flipped DHM), :mod:`dhm_data.shards`,
:mod:`dhm_data.build.layout`.
"""

from dhm_data.load.loader import (  # noqa: E402  (the package's public names)
    HorizontalFlip,
    Loader,
    ShardDataset,
    epoch_order,
    rank_order,
    shard_paths,
)

__all__ = ["HorizontalFlip", "Loader", "ShardDataset", "epoch_order", "rank_order", "shard_paths"]

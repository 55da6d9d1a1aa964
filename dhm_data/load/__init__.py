"""Reading built shards as numpy batches for training: ``ShardDataset``
(:mod:`.dataset`), ``Loader`` (:mod:`.loader`: ordering in :mod:`.order`,
reusable batch buffers in :mod:`.buffers`, the worker pool in
:mod:`.workers`), ``HorizontalFlip`` (:mod:`.transforms`) and
``shard_paths`` (:mod:`.paths`).  Usage, defaults and figures: docs/loader.md.

May import: :mod:`dhm_data.errors`, :mod:`dhm_data.geometry`,
:mod:`dhm_data.prepare` (to re-render a flipped DHM), :mod:`dhm_data.shards`,
:mod:`dhm_data.build.layout`.
"""

from dhm_data.load.dataset import ShardDataset
from dhm_data.load.loader import Loader
from dhm_data.load.order import epoch_order, rank_order
from dhm_data.load.paths import shard_paths
from dhm_data.load.transforms import HorizontalFlip

__all__ = ["HorizontalFlip", "Loader", "ShardDataset", "epoch_order", "rank_order", "shard_paths"]

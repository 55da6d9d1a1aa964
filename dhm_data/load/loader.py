"""``Loader``: batched, seeded, rank-partitioned iteration over a
:class:`~dhm_data.load.ShardDataset`, in this process or in worker processes.

Batches are dicts of numpy arrays read straight into reusable buffers
(:mod:`dhm_data.load.buffers`): zero-copy, and safe to keep, because a buffer
is reused only once nothing refers to any array of the batch it held.
"""

from __future__ import annotations

import numpy as np

from dhm_data.errors import LoaderError
from dhm_data.load.buffers import BatchLayout, SlotPool
from dhm_data.load.order import OrderKey, batch_indices, loader_order
from dhm_data.load.workers import WorkerPool

#: Batches kept in process memory for reuse by a loader without workers.
_LOCAL_SLOTS = 3
#: Slots beyond ``num_workers * prefetch`` in the shared buffer: the batch the
#: caller holds while the next one is produced, and one spare.
_SPARE_SLOTS = 2


class Loader:
    """Batched, seeded, rank-partitioned iteration over a :class:`ShardDataset`.

    Yields dicts of C-contiguous numpy arrays (first axis = batch; text fields
    as numpy ``str`` arrays), in an order that depends only on ``seed``,
    ``epoch``, ``rank``, ``world_size``, ``batch_size``, ``drop_last``,
    ``block_size`` and ``window`` (see :func:`epoch_order`, :func:`rank_order`),
    never on ``num_workers``.  Call :meth:`set_epoch` before each epoch.

    ``num_workers`` > 0 starts that many processes (``mp_context``: a
    multiprocessing context or start-method name; default the platform's),
    kept until :meth:`close`; they fill ``prefetch`` batch slots each in a
    shared memory-mapped buffer, so batches are not pickled.  ``transform``:
    ``f(batch, rng) -> batch`` run in the workers (picklable for spawn) with a
    generator seeded by (seed, epoch, rank, batch index), e.g.
    :class:`HorizontalFlip`.

    Batches are safe to keep: the arrays of a batch are views of a buffer
    that is reused only when no array (or view, or tensor made from one) of
    the batch it held is referenced any more; a caller that keeps every batch
    simply gets fresh memory.  ``copy=True`` yields copies instead (an extra
    pass over every byte, for callers that need arrays owning their memory).
    """

    def __init__(self, dataset, batch_size: int = 64, shuffle: bool = True, seed: int = 0,
                 epoch: int = 0, drop_last: bool = False, num_workers: int = 0, rank: int = 0, world_size: int = 1,
                 transform=None, *, block_size: int = 16, window: int = 1024, prefetch: int = 2,
                 copy: bool = False, mp_context=None, timeout: float = 300.0):
        if batch_size < 1:
            raise LoaderError(f"batch_size must be >= 1, got {batch_size}")
        if not (world_size >= 1 and 0 <= rank < world_size):
            raise LoaderError(f"rank {rank} is not in [0, world_size={world_size})")
        if num_workers < 0 or prefetch < 1:
            raise LoaderError(f"num_workers must be >= 0 and prefetch >= 1, got {num_workers} and {prefetch}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.drop_last = bool(drop_last)
        self.num_workers = int(num_workers)
        self.rank, self.world_size = int(rank), int(world_size)
        self.transform = transform
        self.block_size, self.window = int(block_size), int(window)
        self.prefetch = int(prefetch)
        self.copy = bool(copy)
        self.mp_context = mp_context
        self.timeout = float(timeout)
        self._layout = BatchLayout(dataset, self.batch_size)
        self._pool: WorkerPool | None = None
        self._slots: SlotPool | None = None
        self._local = SlotPool(self._layout.slot_bytes, grow=True, limit=_LOCAL_SLOTS)
        self._gen = 0

    # -------------------------------------------------------------- order
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Sample indices this rank reads in ``epoch`` (default: the current one)."""
        return loader_order(self.dataset.lengths, self._order_key(epoch))

    def _order_key(self, epoch: int | None = None) -> OrderKey:
        e = self.epoch if epoch is None else int(epoch)
        return OrderKey(self.seed, e, self.shuffle, self.block_size, self.window, self.rank, self.world_size,
                        self.batch_size, self.drop_last)

    def batches(self, epoch: int | None = None) -> list[np.ndarray]:
        return self._batches(self.order(epoch))

    def _batches(self, order: np.ndarray) -> list[np.ndarray]:
        return [batch_indices(order, b, self.batch_size) for b in range(-(-len(order) // self.batch_size))]

    def __len__(self) -> int:
        n = len(self.dataset)
        per = (n // self.world_size) // self.batch_size * self.batch_size if self.drop_last else -(-n // self.world_size)
        return -(-per // self.batch_size)

    def _rng_key(self, b: int) -> tuple:
        return (self.seed, self.epoch, self.rank, b, 0x68F11B)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (empty without workers)."""
        return self._pool.pids if self._pool is not None else []

    # -------------------------------------------------------------- iteration
    def __iter__(self):
        key = self._order_key()
        batches = self._batches(loader_order(self.dataset.lengths, key))
        if self.num_workers == 0:
            return self._iter_local(batches)
        return self._iter_workers(batches, key)

    def _iter_local(self, batches):
        for b, idx in enumerate(batches):
            out = None
            if not self.copy:
                _, root = self._local.take()
                out = self._layout.views(root)
                del root
            batch = self.dataset.read_batch(idx, out=out)
            del out
            if self.transform is not None:
                batch = self.transform(batch, np.random.default_rng(self._rng_key(b)))
            yield batch
            del batch   # the caller's references alone keep the slot from reuse

    def _start_workers(self) -> None:
        if self._pool is not None and self._pool.processes:
            return
        n_slots = self.num_workers * self.prefetch + _SPARE_SLOTS
        self._pool = WorkerPool(self.dataset, self._layout, self.num_workers, n_slots, self.transform,
                                self.mp_context, self.timeout)
        self._slots = SlotPool(self._layout.slot_bytes, self._pool.buffer, n_slots, grow=False)

    def _iter_workers(self, batches, order_key):
        self._start_workers()
        pool, slots, layout = self._pool, self._slots, self._layout
        self._gen += 1
        gen = self._gen
        pool.current.value = gen
        nb, target = len(batches), self.num_workers * self.prefetch
        ready: dict = {}
        state = {"next": 0, "in_flight": 0}

        def submit():
            while state["next"] < nb and state["in_flight"] < target:
                slot = slots.free_slot()
                if slot is None and (slots.busy or state["in_flight"] >= self.num_workers):
                    break   # slots are filling or waiting to be yielded: they come free in turn
                if slot is not None:
                    slots.hold(slot)   # None: the caller holds every slot; the batch comes pickled
                b = state["next"]
                pool.put((gen, b, slot, order_key, self._rng_key(b)))
                state["next"] += 1
                state["in_flight"] += 1

        try:
            submit()
            for b in range(nb):
                while b not in ready:
                    g, bb, slot, B, extras, err = pool.get()
                    if g != gen:   # a task of an abandoned iteration: its slot is free again
                        if slot is not None:
                            slots.release(slot)
                        submit()
                        continue
                    state["in_flight"] -= 1
                    if err is not None:
                        if slot is not None:
                            slots.release(slot)
                        raise LoaderError(f"loader worker failed on batch {bb}:\n{err}")
                    ready[bb] = (slot, B, extras)
                slot, B, extras = ready.pop(b)
                batch = {}
                views = layout.views(slots.roots[slot]) if slot is not None else {}
                for name in self.dataset.fields:
                    if name in views:
                        batch[name] = np.array(views[name][:B]) if self.copy else views[name][:B]
                    elif name in extras:
                        batch[name] = extras.pop(name)
                batch.update(extras)
                del views, extras
                if slot is not None:
                    slots.release(slot)   # from now on the batch's own references guard the slot
                submit()
                yield batch
                del batch
        finally:
            for slot, _, _ in ready.values():
                if slot is not None:
                    slots.release(slot)
            # Tasks of this generation still queued or running come back later
            # marked stale; their slots are released then.

    def close(self) -> None:
        """Stop the worker processes (they are restarted on the next iteration)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        self._slots = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:   # interpreter shutdown: the daemon workers end with the process
            pass

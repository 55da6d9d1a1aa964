"""Local worker processes for a build: started early, shared by its stages.

:class:`ShardPool` wraps loky's reusable process executor (the one joblib's
``loky`` backend is built on).  A build starts it before it scans the
dataset (:func:`start_pool`), so that the workers' interpreter start and
imports -- about a second of CPU each -- overlap the scan and the plan
instead of delaying the first sample.  The runner then uses it two ways:

* one unit per process (:meth:`ShardPool.run_each`) when there are at least
  as many units left as processes;
* with fewer units than workers, each unit is written by this process while
  the workers prepare its blocks (:meth:`map_ordered`, :meth:`render_ordered`):
  a worker writes a block's crops and DHMs straight into a *slot* of a
  shared-memory file (``/dev/shm``, else the temporary folder), and this
  process appends the slots to the shard in block order.  Slots are reused,
  so their pages are touched once.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path

import numpy as np
from joblib.externals.loky import get_reusable_executor

from dhm_data.build.memory import keep_freed_memory
from dhm_data.build.prepare_blocks import BlockRenderer


class ShardPool:
    """The ``jobs - 1`` local worker processes (loky) of a ``jobs``-process
    build: this process is the ``jobs``-th (it runs the tasks no worker has
    started yet), so a build never runs more busy processes than ``jobs``
    and starts one interpreter fewer.  See the module docstring."""

    def __init__(self, jobs: int):
        self.jobs = int(jobs)
        self.workers = max(1, self.jobs - 1)
        threads = str(max(1, (os.cpu_count() or 1) // self.jobs))  # what joblib gives each worker
        env = {k: threads for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        self.executor = get_reusable_executor(max_workers=self.workers, env=env, reuse=True)

    def warm(self, reader_name: str | None = None) -> None:
        """Have every worker import what the build's work functions need
        (returns at once; the imports run while this process goes on)."""
        self._warming = [self.executor.submit(_warm_worker, reader_name) for _ in range(self.workers)]

    def run_each(self, fn, items: list):
        """Yield ``fn(item)`` for every item as it finishes, run by the
        workers and by this process (the items no worker has started yet,
        from the end).  On an error, the items not started are cancelled and
        the running ones finish before it is raised."""
        futures = [self.executor.submit(fn, it) for it in items]
        left = set(futures)
        try:
            while left:
                done = {f for f in left if f.done()}
                if not done:
                    stolen = next((f for f in reversed(futures) if f in left and f.cancel()), None)
                    if stolen is not None:
                        left.discard(stolen)
                        yield fn(items[futures.index(stolen)])
                        continue
                    done, _ = wait(left, return_when=FIRST_COMPLETED)
                left -= done
                for f in done:
                    yield f.result()
        except BaseException:
            for f in left:
                f.cancel()
            wait(left)
            raise

    def map_ordered(self, fn, arg_tuples: list) -> list:
        """``[fn(*args) for args in arg_tuples]``, run by the workers and by
        this process, which takes the tasks no worker has started yet, from
        the end of the list."""
        futures = [self.executor.submit(fn, *a) for a in arg_tuples]
        out = [None] * len(futures)
        for k in range(len(futures) - 1, -1, -1):
            if futures[k].cancel():
                out[k] = fn(*arg_tuples[k])
            else:
                break
        return [futures[k].result() if out[k] is None else out[k] for k in range(len(futures))]

    def render_ordered(self, config, strict: bool, blocks: list):
        """Yield, per ``(start, pixel jobs)`` block in order, ``(start, kept,
        rejections, warnings, images, dhms)`` as
        :meth:`dhm_data.build.prepare_blocks.BlockRenderer.render` gives them,
        ``images`` / ``dhms`` views of the block's shared slot, valid until
        the next item is asked for.  A block that no worker has started when
        its turn comes is rendered by this process."""
        if not blocks:
            return
        S = config.crop_size
        b_max = max(len(b) for _, b in blocks)
        n_slots = min(len(blocks), self.workers + 2)
        with _SlotFile((n_slots, 2, b_max, S, S, 3)) as slots:
            def args(k):
                return config, strict, blocks[k][1], slots.path, slots.shape, k % n_slots

            pending = {k: self.executor.submit(render_block_task, *args(k)) for k in range(n_slots)}
            ready = {}
            for k, (start, _) in enumerate(blocks):
                while k not in ready:
                    f = pending[k]
                    if f.cancel():
                        ready[k] = render_block_task(*args(k))
                    elif f.done():
                        ready[k] = f.result()
                    else:  # help: render the latest block no worker has started, else wait
                        later = next((j for j in sorted(pending, reverse=True)
                                      if j > k and j not in ready and pending[j].cancel()), None)
                        if later is None:
                            ready[k] = f.result()
                        else:
                            ready[later] = render_block_task(*args(later))
                pending.pop(k)
                kept, rej, warn = ready.pop(k)
                slot = k % n_slots
                b = int(kept.sum())
                yield start, kept, rej, warn, slots.array[slot, 0, :b], slots.array[slot, 1, :b]
                if k + n_slots < len(blocks):
                    pending[k + n_slots] = self.executor.submit(render_block_task, *args(k + n_slots))


_POOL: list = []


def start_pool(jobs: int, reader_name: str | None = None) -> ShardPool:
    """The process's pool of ``jobs`` workers, started (and warmed) now."""
    if _POOL and _POOL[0].jobs == jobs:
        return _POOL[0]
    _POOL[:] = [ShardPool(jobs)]
    _POOL[0].warm(reader_name)
    return _POOL[0]


class _SlotFile:
    """A shared-memory file of ``shape`` uint8 mapped in this process."""

    def __init__(self, shape: tuple):
        self.shape = tuple(int(s) for s in shape)
        folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        fd, name = tempfile.mkstemp(prefix="dhm-data-slots-", dir=folder)
        self.path = Path(name)
        try:
            os.ftruncate(fd, int(np.prod(self.shape)))
        finally:
            os.close(fd)
        self.array = np.memmap(self.path, np.uint8, "r+", shape=self.shape)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        del self.array
        self.path.unlink(missing_ok=True)


#: worker side: the mapped slot file and the block renderer, kept between tasks
_WORKER: dict = {}


def render_block_task(config, strict: bool, pixels: list, path: Path, shape: tuple, slot: int):
    """Worker: render one block into slot ``slot`` of the slot file."""
    if _WORKER.get("slots_key") != (str(path), shape):
        _WORKER.pop("slots", None)  # one mapping at a time: an old build's file is released
        _WORKER["slots"] = np.memmap(path, np.uint8, "r+", shape=shape)
        _WORKER["slots_key"] = (str(path), shape)
    if _WORKER.get("renderer_key") != (config, strict):
        keep_freed_memory()
        _WORKER["renderer"] = BlockRenderer(config, strict)
        _WORKER["renderer_key"] = (config, strict)
    arr = _WORKER["slots"]
    return _WORKER["renderer"].render(pixels, arr[slot, 0], arr[slot, 1])


def _warm_worker(reader_name: str | None) -> None:
    # warming: the worker imports what the work needs while the main process scans
    import cv2

    import dhm_data.build.prepare_blocks  # noqa: F401

    keep_freed_memory()
    cv2.setNumThreads(1)
    if reader_name:
        from dhm_data.datasets import get_reader  # warming, as above

        get_reader(reader_name)

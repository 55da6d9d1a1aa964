"""The loader's worker processes and the shared batch buffer they fill.

The buffer is one file in /dev/shm (or the temp folder) mapped by the loader
and by every worker, cut into slots of one batch each
(:class:`~dhm_data.load.buffers.BatchLayout`); its name is unlinked as soon as
every worker has mapped it.  A task names a batch (by its index in the
epoch's order, which the worker computes itself) and a slot; the worker reads
the batch into the slot and sends back only the batch's text fields and
whatever a transform added.  A task without a slot (every slot is still held
by the caller) is answered with the whole batch pickled.
"""

from __future__ import annotations

import collections
import os
import signal
import tempfile
import traceback
from multiprocessing.connection import wait

import numpy as np

from dhm_data.errors import LoaderError
from dhm_data.load.buffers import buffer_folder, map_shared
from dhm_data.load.order import batch_indices, loader_order


def worker_main(dataset, layout, buf_path, n_slots, conn, current_gen, transform):
    """Loop of one worker: ``(gen, b, slot, order_key, rng_key)`` tasks on its
    own pipe ``conn`` -> ``(gen, b, slot, B, extras, error)`` results on the
    same pipe (``None`` task, a closed pipe or a dead parent: exit).  Batch
    ``b`` is rows ``[b * batch_size, (b + 1) * batch_size)`` of
    ``loader_order(dataset.lengths, order_key)``, computed here once per
    epoch, so a task is a few dozen bytes whatever the batch size."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    mm = map_shared(buf_path, n_slots * layout.slot_bytes)
    roots = [np.frombuffer(mm, np.uint8, layout.slot_bytes, k * layout.slot_bytes) for k in range(n_slots)]
    conn.send(("ready", os.getpid()))
    parent = os.getppid()
    order_key, order = None, None
    try:
        while True:
            if not conn.poll(2.0):
                if os.getppid() != parent:   # the loader's process died without closing us
                    break
                continue
            task = conn.recv()
            if task is None:
                break
            gen, b, slot, key, rng_key = task
            if gen != current_gen.value:
                conn.send((gen, b, slot, 0, None, None))
                continue
            try:
                if key != order_key:
                    order_key, order = key, loader_order(dataset.lengths, key)
                indices = batch_indices(order, b, key.batch_size)
                conn.send((gen, b, slot, *_fill(dataset, layout, roots, slot, indices, transform, rng_key), None))
            except Exception:   # reported to the loader, which raises it with the batch index
                conn.send((gen, b, slot, 0, None, traceback.format_exc()))
    except (EOFError, OSError):   # the loader closed its end of the pipe, or its process is gone
        pass


def _fill(dataset, layout, roots, slot, indices, transform, rng_key) -> tuple[int, dict]:
    """Read samples ``indices`` into slot ``slot`` (None: no slot, the batch
    goes back pickled) and run ``transform``: ``(B, extras)``, ``extras`` the
    arrays that are not in the slot (text fields, what a transform added)."""
    views = layout.views(roots[slot]) if slot is not None else None
    batch = dataset.read_batch(indices, out=views)
    if transform is not None:
        batch = transform(batch, np.random.default_rng(rng_key))
    B = len(indices)
    extras = {}
    for k, v in batch.items():
        view = views.get(k) if views is not None else None
        if view is not None and isinstance(v, np.ndarray) and v.shape == view[:B].shape and v.dtype == view.dtype:
            if v.__array_interface__["data"][0] != view.__array_interface__["data"][0]:
                view[:B] = v   # a transform returned a new array: into the slot it goes
        else:
            extras[k] = v
    return B, extras


class WorkerPool:
    """``num_workers`` processes sharing one buffer (``buffer``, an ``mmap``)
    of ``n_slots`` batch slots, each with its own duplex pipe to the loader.

    One pipe per worker, written and read directly: a task costs one write and
    a result one read, with no feeder thread or shared queue lock in either
    process (``multiprocessing.Queue`` costs a thread hand-over on each side
    per message, which on a 2-core machine takes CPU from the workers:
    docs/loader.md).  :meth:`put` gives a task to the worker with the fewest
    unanswered tasks; which worker reads a batch never changes the batch."""

    def __init__(self, dataset, layout, num_workers: int, n_slots: int, transform, mp_context, timeout: float):
        import multiprocessing as mp  # deferred: only a loader with workers needs it

        ctx = mp_context
        if ctx is None or isinstance(ctx, str):
            ctx = mp.get_context(ctx)
        self.layout, self.n_slots, self.timeout = layout, int(n_slots), float(timeout)
        self.processes, self.conns, self.pending = [], [], []
        self._results: collections.deque = collections.deque()
        need = self.n_slots * layout.slot_bytes
        fd, path = tempfile.mkstemp(prefix="dhm-data-loader-", dir=buffer_folder(need))
        try:
            os.ftruncate(fd, need)
        finally:
            os.close(fd)
        try:
            self.buffer = map_shared(path, need)
            self.current = ctx.Value("q", 0, lock=False)
            for _ in range(num_workers):
                here, there = ctx.Pipe(duplex=True)
                p = ctx.Process(target=worker_main, daemon=True,
                                args=(dataset, layout, path, self.n_slots, there, self.current, transform))
                p.start()
                there.close()
                self.processes.append(p)
                self.conns.append(here)
                self.pending.append(0)
            for k in range(num_workers):
                if self._recv(k, self.timeout)[0] != "ready":
                    raise LoaderError("loader worker did not start")
        except BaseException:
            self.close()
            raise
        finally:
            # Every worker has mapped the buffer (or failed): the name is no longer needed.
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def put(self, task) -> None:
        """Send ``task`` to the worker with the fewest unanswered tasks."""
        k = self.pending.index(min(self.pending))
        self.conns[k].send(task)
        self.pending[k] += 1

    def get(self):
        """The next result (every result that has arrived is read at once);
        LoaderError when a worker died or none came in ``timeout`` s."""
        waited = 0.0
        while not self._results:
            ready = wait(self.conns, timeout=1.0)
            if not ready:
                waited += 1.0
                if any(not p.is_alive() for p in self.processes):
                    self._died()
                if waited >= self.timeout:
                    self.close()
                    raise LoaderError(f"no batch from the loader workers in {self.timeout:.0f} s") from None
            for c in ready:
                k = self.conns.index(c)
                self._results.append(self._recv(k, 0.0))
                self.pending[k] -= 1
        return self._results.popleft()

    def _recv(self, k: int, timeout: float):
        """One message from worker ``k`` (waiting up to ``timeout`` s); LoaderError if it died."""
        try:
            if self.conns[k].poll(timeout):
                return self.conns[k].recv()
        except (EOFError, OSError):   # its end of the pipe closed: the process is ending
            self.processes[k].join(timeout=5.0)
        self._died()
        self.close()
        raise LoaderError(f"no message from loader worker {k} in {timeout:.0f} s")

    def _died(self) -> None:
        """LoaderError naming the dead workers' process ids and exit codes, if any."""
        dead = [p for p in self.processes if not p.is_alive()]
        if dead:
            codes = ", ".join(f"pid {p.pid} exit code {p.exitcode}" for p in dead)
            self.close()
            raise LoaderError(f"loader worker process died ({codes})") from None

    def close(self) -> None:
        """Stop the workers (the buffer is unmapped once no batch refers to it)."""
        workers, self.processes = self.processes, []
        conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.send(None)
            except Exception:   # the pipe is already broken: the joins below still end the workers
                pass
        for p in workers:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for c in conns:
            c.close()

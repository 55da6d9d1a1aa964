"""The loader's worker processes and the shared batch buffer they fill.

The buffer is one file in /dev/shm (or the temp folder) mapped by the loader
and by every worker, cut into slots of one batch each
(:class:`~dhm_data.load.buffers.BatchLayout`); its name is unlinked as soon as
every worker has mapped it.  A task names a slot; the worker reads the batch
into it and sends back only the batch's text fields and whatever a transform
added.  A task without a slot (every slot is still held by the caller) is
answered with the whole batch pickled.
"""

from __future__ import annotations

import os
import queue
import signal
import tempfile
import traceback

import numpy as np

from dhm_data.errors import LoaderError
from dhm_data.load.buffers import buffer_folder, map_shared


def worker_main(dataset, layout, buf_path, n_slots, task_q, result_q, current_gen, transform):
    """Loop of one worker: ``(gen, b, slot, indices, rng_key)`` tasks ->
    ``(gen, b, slot, B, extras, error)`` results (``None`` task: exit)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    mm = map_shared(buf_path, n_slots * layout.slot_bytes)
    roots = [np.frombuffer(mm, np.uint8, layout.slot_bytes, k * layout.slot_bytes) for k in range(n_slots)]
    result_q.put(("ready", os.getpid()))
    parent = os.getppid()
    while True:
        try:
            task = task_q.get(timeout=2.0)
        except queue.Empty:
            if os.getppid() != parent:   # the loader's process died without closing us
                break
            continue
        if task is None:
            break
        gen, b, slot, indices, rng_key = task
        if gen != current_gen.value:
            result_q.put((gen, b, slot, 0, None, None))
            continue
        try:
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
            del views, batch
            result_q.put((gen, b, slot, B, extras, None))
        except Exception:   # reported to the loader, which raises it with the batch index
            result_q.put((gen, b, slot, 0, None, traceback.format_exc()))


class WorkerPool:
    """``num_workers`` processes sharing one buffer (``buffer``, an ``mmap``)
    of ``n_slots`` batch slots."""

    def __init__(self, dataset, layout, num_workers: int, n_slots: int, transform, mp_context, timeout: float):
        import multiprocessing as mp  # deferred: only a loader with workers needs it

        ctx = mp_context
        if ctx is None or isinstance(ctx, str):
            ctx = mp.get_context(ctx)
        self.layout, self.n_slots, self.timeout = layout, int(n_slots), float(timeout)
        self.processes = []
        need = self.n_slots * layout.slot_bytes
        fd, path = tempfile.mkstemp(prefix="dhm-data-loader-", dir=buffer_folder(need))
        try:
            os.ftruncate(fd, need)
        finally:
            os.close(fd)
        try:
            self.buffer = map_shared(path, need)
            self.task_q = ctx.Queue()
            self.result_q = ctx.Queue()
            self.current = ctx.Value("q", 0, lock=False)
            for _ in range(num_workers):
                p = ctx.Process(target=worker_main, daemon=True,
                                args=(dataset, layout, path, self.n_slots, self.task_q, self.result_q,
                                      self.current, transform))
                p.start()
                self.processes.append(p)
            ready = 0
            while ready < num_workers:
                if self.get()[0] == "ready":
                    ready += 1
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
        self.task_q.put(task)

    def get(self):
        """The next result; LoaderError when a worker died or none came in ``timeout`` s."""
        waited = 0.0
        while True:
            try:
                return self.result_q.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
                dead = [p for p in self.processes if not p.is_alive()]
                if dead:
                    codes = ", ".join(f"pid {p.pid} exit code {p.exitcode}" for p in dead)
                    self.close()
                    raise LoaderError(f"loader worker process died ({codes})") from None
                if waited >= self.timeout:
                    self.close()
                    raise LoaderError(f"no batch from the loader workers in {self.timeout:.0f} s") from None

    def close(self) -> None:
        """Stop the workers (the buffer is unmapped once no batch refers to it)."""
        workers, self.processes = self.processes, []
        for _ in workers:
            try:
                self.task_q.put(None)
            except Exception:   # the queue is already broken: the joins below still end the workers
                pass
        for p in workers:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for name in ("task_q", "result_q"):
            q = getattr(self, name, None)
            if q is not None:
                q.close()
                q.join_thread()

"""Local worker processes for a build: started early, shared by its stages.

:class:`ShardPool` is a process pool whose ``jobs - 1`` workers start before
the build scans the dataset (:func:`start_pool`).  On Linux they are *forked*
from this process once its imports are done (a standard
:class:`concurrent.futures.ProcessPoolExecutor` with the ``fork`` start
method): a worker is ready within milliseconds, with numpy, OpenCV, h5py and
dhm-data already imported, instead of paying the second of CPU a fresh
interpreter costs (measured in docs/performance.md) while the first samples
wait.  Elsewhere (no ``fork``, or macOS, where forking a process that has
loaded system frameworks is unsafe), or with ``DHM_DATA_FORK_WORKERS=0``,
the workers are loky's fresh interpreters, the ones joblib's ``loky``
backend uses.  The runner uses the pool two ways:

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

import multiprocessing
import os
import signal
import sys
import tempfile
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import cv2
import numpy as np

from dhm_data.build.blas import set_blas_threads
from dhm_data.build.memory import keep_freed_memory
from dhm_data.build.prepare_blocks import BlockRenderer


#: Blocks of a shard, beyond those the workers run or have queued, whose
#: slots are free while this process writes: the blocks it may render itself.
_STEALABLE = 4


class ShardPool:
    """The ``jobs - 1`` local worker processes of a ``jobs``-process build.

    This process is the ``jobs``-th: the executor is only ever handed what
    its workers run or have queued (:attr:`window` tasks), and whenever this
    process would wait it takes a task no worker has, from the back of the
    list (the workers take them from the front).  So a build never runs more
    busy processes than ``jobs``, and no task is cancelled.  See the module
    docstring.
    """

    def __init__(self, jobs: int):
        self.jobs = int(jobs)
        self.workers = max(1, self.jobs - 1)
        #: tasks handed to the executor at once: one running and one queued per worker
        self.window = 2 * self.workers
        #: BLAS threads per worker: the cores shared out, as joblib gives its workers
        self.blas_threads = max(1, (os.cpu_count() or 1) // self.jobs)
        self.processes: list = []
        self.forked = forking_is_safe()
        if self.forked:
            self.executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("fork"),
                                                initializer=_forked_worker_start, initargs=(self.blas_threads,))
        else:
            from joblib.externals.loky import get_reusable_executor  # only where workers cannot be forked

            env = {k: str(self.blas_threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
            self.executor = get_reusable_executor(max_workers=self.workers, env=env, reuse=True)

    @property
    def broken(self) -> bool:
        """True once a worker died: the executor takes no more tasks."""
        flags = getattr(self.executor, "_flags", None)  # loky keeps it there
        return bool(getattr(flags, "broken", None) or getattr(self.executor, "_broken", False))

    def warm(self, reader_name: str | None = None) -> None:
        """Start the workers now and have each import what the build's work
        functions need (returns at once; the work runs while this process
        goes on).  Forked workers have it already: they only take the
        worker's settings."""
        threads = cv2.getNumThreads()
        # OpenCV's worker threads do not survive a fork: a child that touches
        # the pool it inherited (cv2.setNumThreads, any parallel call) hangs
        # forever.  The pool is stopped while the executor forks its workers
        # (in the first submit) and this process gets it back afterwards.
        cv2.setNumThreads(1)
        try:
            with warnings.catch_warnings():
                # Python >= 3.12 warns about fork() in a process with threads (the
                # BLAS library's idle pool, which re-creates itself in the child).
                warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
                self._warming = [self.executor.submit(_warm_worker, reader_name) for _ in range(self.workers)]
        finally:
            cv2.setNumThreads(threads)
        # the worker processes, kept here: the executor drops its list when it shuts down
        self.processes = list((getattr(self.executor, "_processes", None) or {}).values())

    def deaths(self) -> str:
        """What ended the pool's dead workers, e.g. ``"worker pid 4711 killed
        by SIGKILL (the kernel's out-of-memory killer sends it)"``; empty when
        none died or the executor does not tell."""
        processes = list(self.processes)
        manager = getattr(self.executor, "_executor_manager_thread", None)
        if self.broken and manager is not None:
            # The executor's own thread stops the other workers and reaps them all:
            # wait for it rather than race it for their exit statuses.
            manager.join(timeout=5.0)
        ended = [p for p in processes if p.exitcode not in (None, 0)]
        first = [p for p in ended if p.exitcode != -signal.SIGTERM] or ended  # the others were stopped after it
        out = []
        for p in first:
            if p.exitcode < 0:
                name = signal.Signals(-p.exitcode).name
                hint = " (the kernel's out-of-memory killer sends it)" if name == "SIGKILL" else ""
                out.append(f"worker pid {p.pid} killed by {name}{hint}")
            else:
                out.append(f"worker pid {p.pid} exited with code {p.exitcode}")
        return "; ".join(out)

    def shutdown(self) -> None:
        """Stop the workers (those in the middle of a task are terminated)."""
        processes = list(self.processes)
        self.executor.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            if p.is_alive():
                p.terminate()

    def run_each(self, fn, items: list):
        """Yield ``fn(item)`` for every item as it finishes, run by the
        workers (from the front of ``items``) and by this process (from the
        back, whenever no result is ready).  On an error, the items not
        started are dropped and the running ones finish before it is
        raised."""
        for _, result in self._front_and_back(fn, [(it,) for it in items]):
            yield result

    def map_ordered(self, fn, arg_tuples: list) -> list:
        """``[fn(*args) for args in arg_tuples]``, run as :meth:`run_each`
        runs its items."""
        out = [None] * len(arg_tuples)
        for k, result in self._front_and_back(fn, arg_tuples):
            out[k] = result
        return out

    def _front_and_back(self, fn, arg_tuples: list):
        """Yield ``(k, fn(*arg_tuples[k]))`` as each finishes: the executor
        gets tasks from the front, at most :attr:`window` at a time; this
        process runs one from the back whenever none has finished."""
        front, back = 0, len(arg_tuples)
        running: dict = {}
        try:
            while front < back or running:
                while front < back and len(running) < self.window:
                    running[self.executor.submit(fn, *arg_tuples[front])] = front
                    front += 1
                done = [f for f in running if f.done()]
                if not done and front < back:
                    back -= 1
                    yield back, fn(*arg_tuples[back])
                    continue
                if not done:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    yield running.pop(f), f.result()
        except BaseException:
            wait(running)
            raise

    def render_ordered(self, config, strict: bool, blocks: list):
        """Yield, per ``(start, pixel jobs)`` block in order, ``(start, kept,
        rejections, warnings, images, dhms)`` as
        :meth:`dhm_data.build.prepare_blocks.BlockRenderer.render` gives them,
        ``images`` / ``dhms`` views of the block's shared slot, valid until
        the next item is asked for.

        Blocks ``k .. k + slots - 1`` (``k`` the next to yield) have a slot
        each: the workers render them from the front, and this process, when
        block ``k`` is not ready, renders the last one no worker has."""
        if not blocks:
            return
        n = len(blocks)
        S = config.crop_size
        b_max = max(len(b) for _, b in blocks)
        n_slots = min(n, self.window + _STEALABLE)
        running: dict = {}
        with _SlotFile((n_slots, 2, b_max, S, S, 3)) as slots:
            def args(j):
                return config, strict, blocks[j][1], slots.path, slots.shape, j % n_slots

            started, ready = set(), {}

            def collect(done):
                for f in done:
                    ready[running.pop(f)] = f.result()

            try:
                for k, (start, _) in enumerate(blocks):
                    end = min(n, k + n_slots)
                    while k not in ready:
                        j = k
                        while len(running) < self.window:  # the workers take the window's first free blocks
                            while j < end and j in started:
                                j += 1
                            if j == end:
                                break
                            running[self.executor.submit(render_block_task, *args(j))] = j
                            started.add(j)
                        collect([f for f in running if f.done()])
                        if k in ready:
                            break
                        free = [j for j in range(k, end) if j not in started]
                        if free:  # rather than wait: render the window's last block no worker has
                            started.add(free[-1])
                            ready[free[-1]] = render_block_task(*args(free[-1]))
                        else:
                            collect(wait(running, return_when=FIRST_COMPLETED)[0])
                    kept, rej, warn = ready.pop(k)
                    b = int(kept.sum())
                    yield start, kept, rej, warn, slots.array[k % n_slots, 0, :b], slots.array[k % n_slots, 1, :b]
            finally:
                wait(running)  # no worker may still write a slot once the file is gone


_POOL: list = []


def start_pool(jobs: int, reader_name: str | None = None) -> ShardPool:
    """The process's pool of ``jobs`` workers, started (and warmed) now; the
    running one when it has that size and none of its workers died."""
    if _POOL and _POOL[0].jobs == jobs and not _POOL[0].broken:
        return _POOL[0]
    if _POOL:
        _POOL.pop().shutdown()
    _POOL[:] = [ShardPool(jobs)]
    _POOL[0].warm(reader_name)
    return _POOL[0]


def stop_pool() -> None:
    """Stop the process's pool, if any (workers in the middle of a task too)."""
    if _POOL:
        _POOL.pop().shutdown()


def forking_is_safe() -> bool:
    """Can the workers be forked from this process?  Linux only: macOS
    forbids using its system frameworks in a forked child, Windows has no
    ``fork``.  ``DHM_DATA_FORK_WORKERS=0`` asks for loky's fresh interpreters
    instead (for a host program whose own threads make forking it unsafe)."""
    if os.environ.get("DHM_DATA_FORK_WORKERS", "1") == "0":
        return False
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def _forked_worker_start(blas_threads: int) -> None:
    # Ctrl-C reaches the whole process group: the main process stops the
    # build (and the pool); a worker printing its own KeyboardInterrupt would
    # only bury the message that says how to resume.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_blas_threads(blas_threads)


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

"""The build's local worker pool (dhm_data/build/shard_pool.py): forked
workers, order kept, this process taking part, a dead worker named."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from dhm_data.build import shard_pool
from dhm_data.build.shard_pool import ShardPool, forking_is_safe, start_pool, stop_pool

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="workers are forked on Linux only (loky elsewhere)")


def _pid_after(seconds: float, i: int) -> tuple[int, int]:
    time.sleep(seconds)
    return os.getpid(), i


def _has_module(name: str) -> bool:
    return name in sys.modules


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


@pytest.fixture
def pool():
    p = ShardPool(2)
    p.warm(None)
    yield p
    p.shutdown()


def test_workers_are_forked_with_this_process_imports(pool):
    # forked when the pool started, after this test module imported dhm_data.build: nothing to import again
    assert pool.executor.submit(_has_module, "dhm_data.build.shard_pool").result(timeout=30)
    assert pool.executor.submit(os.getppid).result(timeout=30) == os.getpid()


def test_map_ordered_keeps_order_and_this_process_takes_part(pool):
    args = [(0.05, i) for i in range(12)]
    out = pool.map_ordered(_pid_after, args)
    assert [i for _, i in out] == list(range(12))
    pids = {p for p, _ in out}
    assert os.getpid() in pids and len(pids) == 2, pids
    # this process takes from the back, the worker from the front
    assert out[0][0] != os.getpid() and out[-1][0] == os.getpid()


def test_run_each_yields_every_item_once(pool):
    got = list(pool.run_each(lambda_free_square, list(range(9))))
    assert sorted(got) == [i * i for i in range(9)]


def lambda_free_square(i: int) -> int:
    return i * i


def test_a_killed_worker_is_named_and_the_next_build_gets_a_new_pool():
    stop_pool()
    p = start_pool(2)
    worker = next(iter(p.executor._processes))
    f = p.executor.submit(_sleep, 10)
    time.sleep(0.3)
    os.kill(worker, signal.SIGKILL)
    with pytest.raises(Exception) as e:
        f.result(timeout=30)
    assert type(e.value).__name__ == "BrokenProcessPool"
    assert p.broken
    assert p.deaths() == f"worker pid {worker} killed by SIGKILL (the kernel's out-of-memory killer sends it)"
    q = start_pool(2)
    assert q is not p and not q.broken
    assert q.map_ordered(_pid_after, [(0.0, 1), (0.0, 2)])[1][1] == 2
    stop_pool()
    assert shard_pool._POOL == []


def test_fork_can_be_turned_off_for_loky_workers(monkeypatch):
    monkeypatch.setenv("DHM_DATA_FORK_WORKERS", "0")
    assert not forking_is_safe()
    p = ShardPool(2)
    assert not p.forked
    assert [i for _, i in p.map_ordered(_pid_after, [(0.0, i) for i in range(4)])] == [0, 1, 2, 3]
    monkeypatch.delenv("DHM_DATA_FORK_WORKERS")
    assert forking_is_safe()


def _blur_in_worker() -> int:
    import cv2
    import numpy as np

    cv2.setNumThreads(2)
    img = np.full((800, 800, 3), 7, np.uint8)
    return int(cv2.GaussianBlur(img, (31, 31), 5)[400, 400, 0])


def test_workers_fork_cleanly_after_opencv_ran_its_thread_pool():
    """OpenCV's worker threads do not survive a fork: a child touching the
    inherited pool hangs.  A program that used OpenCV in parallel before a
    -j 2 build (the demo: synth, then build, in one process) must still get
    working workers, and its own OpenCV threads back."""
    import cv2
    import numpy as np

    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    img = np.full((1500, 1500, 3), 7, np.uint8)
    for _ in range(3):
        cv2.GaussianBlur(img, (31, 31), 5)  # OpenCV's pool is running now
    p = ShardPool(2)
    try:
        p.warm(None)
        p._warming[0].result(timeout=30)  # the worker's cv2.setNumThreads(1) hung here before
        assert p.executor.submit(_blur_in_worker).result(timeout=30) == 7
        assert cv2.getNumThreads() == 2
    finally:
        p.shutdown()
        cv2.setNumThreads(before)


def _worker_blas_threads() -> list:
    from dhm_data.build.blas import blas_threads

    return blas_threads()


def test_forked_workers_get_their_share_of_blas_threads(pool):
    """A forked worker would inherit this process's BLAS thread count (all the
    cores); it gets cpu_count // jobs, as loky's workers got through their
    environment, so that -j N processes do not oversubscribe the cores."""
    from dhm_data.build.blas import blas_threads, loaded_openblas

    if not loaded_openblas():
        pytest.skip("no OpenBLAS loaded in this process (numpy built against another BLAS)")
    assert pool.blas_threads == max(1, (os.cpu_count() or 1) // 2)
    got = pool.executor.submit(_worker_blas_threads).result(timeout=30)
    assert got and set(got) == {pool.blas_threads}, got
    assert blas_threads() and len(blas_threads()) == len(got)


def test_set_blas_threads_sets_every_loaded_openblas():
    from dhm_data.build.blas import blas_threads, loaded_openblas, set_blas_threads

    if not loaded_openblas():
        pytest.skip("no OpenBLAS loaded in this process (numpy built against another BLAS)")
    before = blas_threads()
    try:
        assert set_blas_threads(1) == len(before) >= 1
        assert set(blas_threads()) == {1}
    finally:
        for lib_threads in sorted(set(before)):
            set_blas_threads(lib_threads)

"""A build worker's allocator setting (glibc ``mallopt``)."""

from __future__ import annotations

import ctypes
import ctypes.util

#: glibc mallopt parameters (malloc.h) and the values a worker uses.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_WORKER_MMAP_THRESHOLD = 32 << 20  # glibc rejects more than HEAP_MAX_SIZE / 2 (32 MiB on 64-bit)
_WORKER_TRIM_THRESHOLD = 128 << 20


def keep_freed_memory() -> bool:
    """Make this process's glibc ``malloc`` serve blocks up to 32 MiB from its
    heap and keep up to 128 MiB of freed memory for reuse, instead of mapping
    fresh pages for every large block and handing them back on ``free``.

    Why: a worker decodes one 600 KB image after another (OpenCV allocates
    each output) and HDF5 allocates a buffer per compressed chunk.  By
    default every such block over the adaptive threshold is a new ``mmap``,
    and first-touching fresh pages cost about 3 us per 4 KiB page on this
    project's VMs: measured, that alone doubled the JPEG decode time
    (1,900 -> 930 images/s in one process).  The cost is resident memory
    that stays with the worker (at most the trim threshold above its peak).
    Returns False where there is no glibc (macOS, Windows, musl) or it
    refuses a setting.  Called by the build's workers; idempotent.  It is a
    process-wide setting: a build with one job runs in the calling process
    (the CLI, or your Python session when you call ``run_build``), which
    keeps the setting afterwards.
    """
    if _FREED_MEMORY_KEPT:  # once per process: find_library below runs ldconfig (milliseconds)
        return _FREED_MEMORY_KEPT[0]

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    mapped = bool(mallopt(_M_MMAP_THRESHOLD, _WORKER_MMAP_THRESHOLD))
    trimmed = bool(mallopt(_M_TRIM_THRESHOLD, _WORKER_TRIM_THRESHOLD))
    _FREED_MEMORY_KEPT.append(mapped and trimmed)
    return mapped and trimmed


_FREED_MEMORY_KEPT: list = []

"""The thread count of the OpenBLAS libraries loaded in a build worker.

A forked worker inherits its parent's BLAS settings: on a 2-core machine a
``-j 2`` build would run two processes with two BLAS threads each, and the
fit stage's batched solves then oversubscribe the cores (measured: the
3,000-image synthetic LS3D-W fit went from 3.3-3.6 s to 4.8-8.8 s).  loky's
fresh workers avoided it through ``OPENBLAS_NUM_THREADS`` in their
environment, which a library already loaded no longer reads, so a forked
worker sets the count through the library itself.  numpy and scipy each
ship their own OpenBLAS, under prefixed symbol names
(``scipy_openblas_set_num_threads64_`` in numpy's ILP64 build).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

#: Thread-count setters and getters of the OpenBLAS builds in the wheels of
#: numpy and scipy, and of a system OpenBLAS.
_SET = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
        "openblas_set_num_threads")
_GET = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads", "openblas_get_num_threads64_",
        "openblas_get_num_threads")


def loaded_openblas() -> list[Path]:
    """Paths of the OpenBLAS libraries mapped into this process (Linux's
    ``/proc/self/maps``; empty elsewhere)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = {line.split()[-1] for line in maps.splitlines() if ".so" in line and "/" in line}
    return sorted(Path(p) for p in paths if "openblas" in Path(p).name.lower())


def set_blas_threads(n: int) -> int:
    """Give every loaded OpenBLAS ``n`` threads; returns how many libraries
    took it (0 where none is loaded or it exports no setter)."""
    done = 0
    for lib in _libraries():
        fn = _symbol(lib, _SET)
        if fn is not None:
            fn.argtypes, fn.restype = [ctypes.c_int], None
            fn(int(n))
            done += 1
    return done


def blas_threads() -> list[int]:
    """The thread count of every loaded OpenBLAS (for tests and reports)."""
    out = []
    for lib in _libraries():
        fn = _symbol(lib, _GET)
        if fn is not None:
            fn.argtypes, fn.restype = [], ctypes.c_int
            out.append(int(fn()))
    return out


def _libraries() -> list:
    libs = []
    for path in loaded_openblas():
        try:
            libs.append(ctypes.CDLL(str(path)))  # already loaded: the same handle, nothing new runs
        except OSError:
            continue
    return libs


def _symbol(lib, names: tuple):
    for name in names:
        fn = getattr(lib, name, None)
        if fn is not None:
            return fn
    return None

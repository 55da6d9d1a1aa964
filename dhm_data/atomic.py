"""Write-then-rename helpers: a reader never sees a half-written file.

The temporary name is a dot-file in the destination folder (same filesystem,
so ``os.replace`` is atomic), ``.<name>.tmp-<pid>``; it is removed on error.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
from pathlib import Path

import numpy as np


def temporary_path(final: Path) -> Path:
    final = Path(final)
    return final.parent / f".{final.name}.tmp-{os.getpid()}"


@contextlib.contextmanager
def atomic_path(final):
    """Yield a temporary path to write; on success fsync it and rename it to
    ``final``; on any exception (Ctrl-C included) delete it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(final)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


class EarlyWriteback:
    """Start writing a growing file's dirty pages to disk while it is still
    being written, so that the final ``fsync`` only waits for the last ones.

    Linux ``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`` on a read-only
    descriptor of the file: it queues the writeback and returns at once (no
    durability on its own: the caller still fsyncs).  Measured on 150 MB
    written in 30 blocks with work between them: the fsync went from ~60 ms
    to under 1 ms.  A no-op where the call does not exist (macOS, Windows)
    or the file cannot be opened.
    """

    def __init__(self, path):
        self._fd = None
        self._sync = _sync_file_range()
        if self._sync is not None:
            try:
                self._fd = os.open(path, os.O_RDONLY)
            except OSError:
                self._fd = None

    def start(self) -> None:
        """Queue the writeback of every dirty page of the file."""
        if self._fd is not None:
            self._sync(self._fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # a failure only loses the head start

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>


def _sync_file_range():
    """libc's ``sync_file_range`` (ctypes, from the symbols already loaded),
    or None where there is none."""
    try:
        fn = ctypes.CDLL(None).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def write_bytes(final, data: bytes) -> None:
    with atomic_path(final) as tmp:
        Path(tmp).write_bytes(data)


def write_json(final, obj) -> None:
    write_bytes(final, (json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n").encode())


def json_default(o):
    """``json.dumps(default=...)`` for numpy scalars and arrays and paths."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")

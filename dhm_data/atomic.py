"""Write-then-rename helpers: a reader never sees a half-written file.

The temporary name is a dot-file in the destination folder (same filesystem,
so ``os.replace`` is atomic), ``.<name>.tmp-<pid>``; it is removed on error.
"""

from __future__ import annotations

import contextlib
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

"""Reading files safely: one non-blocking read, and a clear reason when a path
is not a readable regular file (missing, a directory, a symlink loop, a
broken symlink, a FIFO).  Byte-level helpers with no knowledge of datasets."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from dhm_data.errors import DatasetError


def path_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable regular file, or None when it is one:
    ``"symlink loop ..."``, ``"broken symlink ..."``, ``"is a directory ..."``,
    ``"missing"``."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop (too many levels of symbolic links)"
        if os.path.islink(path):
            return f"broken symlink (points to {os.readlink(path)}, which does not exist)"
        if e.errno == errno.ENOENT:
            return "missing"
        return f"cannot be read ({e.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, expected a file"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    return None


def read_regular_file(path, limit: int | None = None, max_size: int | None = None) -> bytes | None:
    """Up to ``limit`` bytes (default: all) of ``path``, or None when it is
    not a regular file or is larger than ``max_size``.  One non-blocking open
    (a FIFO cannot hang the caller) and one ``fstat``; ``OSError`` from the
    open or the read propagates (callers turn it into a :class:`DatasetError`
    with :func:`require_file`)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (max_size is not None and st.st_size > max_size):
            return None
        n = st.st_size if limit is None else min(limit, st.st_size)
        chunks, got = [], 0
        while got < n:
            b = os.read(fd, n - got)
            if not b:
                break
            chunks.append(b)
            got += len(b)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def require_file(path: Path, what: str, context: str = "") -> None:
    """Raise :class:`DatasetError` ``"<path>: <what> is missing<context>"`` (or
    names the symlink loop, broken symlink or directory found instead)."""
    why = path_problem(path)
    if why is None:
        return
    if why == "missing":
        raise DatasetError(f"{path}: {what} is missing{context}")
    raise DatasetError(f"{path}: {what} {why}{context}")

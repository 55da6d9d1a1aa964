"""What a unit record stores about a file: size, modification time and a
content hash (the runner's "done" test, :mod:`dhm_data.build.runner`)."""

from __future__ import annotations

import errno
import hashlib
import os

#: content hashes are sha256 cut to this many hex digits (128 bits)
_HASH_DIGITS = 32


def file_state(p, with_hash: bool = True) -> list:
    """``[size, mtime_ns, content sha256]`` of a file (hash omitted unless
    ``with_hash``); ``["missing"]`` or ``["unreadable", errno]`` when it cannot
    be read (a missing input is a state too: its unit rejected the sample)."""
    try:
        st = os.stat(p)
        if not with_hash:
            return [st.st_size, st.st_mtime_ns]
        return [st.st_size, st.st_mtime_ns, content_hash(p)]
    except OSError as e:  # missing, a symlink loop, unreadable: the unit's reader names the problem
        return ["missing"] if e.errno == errno.ENOENT else ["unreadable", e.errno]


def content_hash(p) -> str:
    """sha256 of the file's bytes (hex, :data:`_HASH_DIGITS` digits)."""
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()[:_HASH_DIGITS]

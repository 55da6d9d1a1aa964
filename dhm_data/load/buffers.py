"""Batch buffers that are safe to keep.

A batch is a dict of views into one *slot*: a flat uint8 block holding every
array field of one batch (:class:`BatchLayout`).  Every view's ``base`` is
the slot's root array (numpy collapses chains of views down to the first
array that owns its memory or wraps a foreign buffer), so while the caller
holds any array of a batch, or any view derived from one (a slice, a
reshape, a ``torch.from_numpy`` tensor), the root's reference count is above
the count of the pool's own references.  :class:`SlotPool` hands a slot out
again only when its count is back to that baseline: no copy, and no batch a
caller still holds is ever overwritten.
"""

from __future__ import annotations

import mmap
import os
import sys

import numpy as np

from dhm_data.shards import schema


def _aligned(n: int, a: int = 64) -> int:
    return (n + a - 1) // a * a


class BatchLayout:
    """Byte layout of one batch slot: each array field at a 64-byte aligned
    offset (text fields are never in a slot: they are built fresh)."""

    def __init__(self, dataset, batch_size: int):
        self.entries = []
        off = 0
        for name in dataset.fields:
            if schema.field(name).is_text:
                continue
            shape, dtype = dataset.field_spec(name)
            nbytes = batch_size * int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            self.entries.append((name, (batch_size,) + tuple(shape), dtype, off, off + nbytes))
            off = _aligned(off + nbytes)
        self.slot_bytes = max(off, 64)

    def views(self, root: np.ndarray) -> dict:
        """Field name -> array view of the slot ``root`` (flat uint8)."""
        return {name: root[start:end].view(dtype).reshape(shape) for name, shape, dtype, start, end in self.entries}


def _refs(roots: list, i: int) -> int:
    return sys.getrefcount(roots[i])


class SlotPool:
    """Slots whose reuse waits until nothing outside the pool refers to them.

    The pool creates its slot roots itself and is their only holder, so a
    root's reference count above that of an array held by one list alone
    means a batch view of it is alive.  ``buffer``: a shared buffer (e.g. an
    ``mmap``) cut into ``n_slots`` fixed slots; otherwise slots are allocated
    in process memory when every slot is held (``grow``, up to ``limit``
    slots; beyond that :meth:`take` returns a fresh, unpooled root).  Slots
    the owner marks busy (:meth:`hold`: being filled) are never free.
    """

    def __init__(self, slot_bytes: int, buffer=None, n_slots: int = 0, grow: bool = True, limit: int = 4):
        self.slot_bytes = int(slot_bytes)
        self.roots: list[np.ndarray] = []
        if buffer is not None:
            self.roots = [np.frombuffer(buffer, np.uint8, self.slot_bytes, k * self.slot_bytes)
                          for k in range(int(n_slots))]
        self.grow, self.limit = bool(grow), int(limit)
        self.busy: set[int] = set()
        # the count _refs sees for an array that only a list refers to, measured
        # by the same code path (the interpreter's own references vary by version)
        self._baseline = _refs([np.empty(0)], 0)

    def free_slot(self) -> int | None:
        """Index of a slot nothing refers to (and not busy), or None."""
        for i in range(len(self.roots)):
            if i not in self.busy and _refs(self.roots, i) <= self._baseline:
                return i
        return None

    def take(self) -> tuple[int | None, np.ndarray]:
        """(index, root) of a free slot, growing the pool when allowed; (None,
        fresh root) when the pool is full of slots still held by the caller."""
        i = self.free_slot()
        if i is None and self.grow:
            if len(self.roots) >= self.limit:
                return None, anonymous_block(self.slot_bytes)
            self.roots.append(anonymous_block(self.slot_bytes))
            i = len(self.roots) - 1
        return i, (self.roots[i] if i is not None else None)

    def hold(self, i: int) -> None:
        self.busy.add(i)

    def release(self, i: int) -> None:
        self.busy.discard(i)


def anonymous_block(nbytes: int) -> np.ndarray:
    """A flat uint8 array of ``nbytes`` in a private anonymous memory map of its own.

    Not ``np.empty``: numpy asks the kernel for transparent huge pages on
    blocks of 4 MB and more (``madvise(MADV_HUGEPAGE)``), and on the project's
    VM a loader without workers, in a fresh process, read 13,000-14,000
    samples/s into such blocks and 20,500-22,300 into plain 4 KB pages
    (docs/loader.md), which is also what the workers' shared buffer is made
    of.  The map is unmapped when the array and every view of it are gone.
    """
    return np.frombuffer(mmap.mmap(-1, max(int(nbytes), 1)), np.uint8, int(nbytes))


def buffer_folder(need: int) -> str | None:
    """/dev/shm when it exists and has room for ``need`` bytes (containers often
    mount a small one; a too-small tmpfs would SIGBUS), else the temp folder."""
    shm = "/dev/shm"
    try:
        if os.path.isdir(shm) and os.access(shm, os.W_OK):
            st = os.statvfs(shm)
            if st.f_bavail * st.f_frsize > 1.2 * need:
                return shm
    except OSError:
        pass
    return None


def map_shared(path: str, size: int) -> mmap.mmap:
    """A shared read-write map of ``size`` bytes of the file ``path``."""
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)

"""Minimal Torch7 serialisation for LS3D-W's ``.t7`` landmark files.

LS3D-W stores each image's 68 landmarks as a Torch7 ``torch.FloatTensor`` of
size 68x2 (0-based pixel x, y) written by Lua's ``torch.save(path, t)`` in
binary mode.  That format (torch7 ``File.lua`` ``writeObject`` and
``generic/Tensor.c`` / ``Storage.c``), little-endian, ``int`` = 4 bytes,
``long`` = 8 bytes::

    int 4 (TYPE_TORCH)  int 1 (object index)
    int 3 "V 1"         int 17 "torch.FloatTensor"
    int ndim            long size[ndim]   long stride[ndim]
    long storageOffset + 1 (Lua's 1-based offset)
    int 4 (TYPE_TORCH)  int 2 (object index)
    int 3 "V 1"         int 18 "torch.FloatStorage"
    long n              float32 data[n]

(a tensor without storage writes ``int 0`` (nil) instead of the storage
object).  :func:`write_t7` writes exactly that for a contiguous 2D float32
array; :func:`read_t7` reads Float and Double tensors of any dimension,
stride and storage offset (also files without the ``"V 1"`` version string,
written by torch7 before versioning) and refuses anything else with a
:class:`T7Error` naming the file and what it found.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from dhm_data import atomic
from dhm_data.errors import T7Error

TYPE_NIL = 0
TYPE_NUMBER = 1
TYPE_STRING = 2
TYPE_TABLE = 3
TYPE_TORCH = 4
TYPE_BOOLEAN = 5
_TYPE_NAMES = {0: "nil", 1: "number", 2: "string", 3: "table", 4: "torch object", 5: "boolean", 6: "function", 7: "function", 8: "function"}

_TENSORS = {b"torch.FloatTensor": (b"torch.FloatStorage", np.dtype("<f4")), b"torch.DoubleTensor": (b"torch.DoubleStorage", np.dtype("<f8"))}

__all__ = ["write_t7", "read_t7", "t7_bytes", "T7Error"]


def _string(s: bytes) -> bytes:
    return struct.pack("<i", len(s)) + s


def t7_bytes(array) -> bytes:
    """The bytes ``torch.save`` writes for ``torch.FloatTensor(array)``.

    ``array``: any real array (cast to float32, C order); its dimensions and
    contiguous strides are kept (LS3D-W uses 68x2).
    """
    a = np.ascontiguousarray(np.asarray(array, dtype="<f4"))
    if a.ndim == 0:
        a = a.reshape(1)
    strides = [s // 4 for s in a.strides]
    out = [struct.pack("<ii", TYPE_TORCH, 1), _string(b"V 1"), _string(b"torch.FloatTensor")]
    out.append(struct.pack("<i", a.ndim))
    out.append(struct.pack(f"<{a.ndim}q", *a.shape))
    out.append(struct.pack(f"<{a.ndim}q", *strides))
    out.append(struct.pack("<q", 1))  # storageOffset 0, written 1-based
    if a.size == 0:
        out.append(struct.pack("<i", TYPE_NIL))
    else:
        out += [struct.pack("<ii", TYPE_TORCH, 2), _string(b"V 1"), _string(b"torch.FloatStorage")]
        out.append(struct.pack("<q", a.size))
        out.append(a.tobytes())
    return b"".join(out)


def write_t7(path, array) -> Path:
    """Write ``array`` (e.g. ``(68, 2)`` landmarks, 0-based pixels) as a
    Torch7 FloatTensor file, atomically (temporary name, then rename)."""
    path = Path(path)
    atomic.write_bytes(path, t7_bytes(array))
    return path


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.d, self.i, self.path = data, 0, path

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.i + n > len(self.d):
            raise T7Error(f"{self.path}: truncated Torch7 file: needed {n} bytes for {what} at offset {self.i}, file has {len(self.d)}")
        b = self.d[self.i : self.i + n]
        self.i += n
        return b

    def int(self, what) -> int:
        return struct.unpack("<i", self.take(4, what))[0]

    def long(self, what) -> int:
        return struct.unpack("<q", self.take(8, what))[0]

    def longs(self, n, what):
        return list(struct.unpack(f"<{n}q", self.take(8 * n, what)))

    def string(self, what) -> bytes:
        n = self.int(what + " length")
        if n > 1 << 20:
            raise T7Error(f"{self.path}: implausible string length {n} for {what} at offset {self.i - 4}")
        return self.take(n, what)

    def torch_header(self, what):
        """(index, class name) of a TYPE_TORCH object; accepts pre-version files."""
        index = self.int(what + " object index")
        first = self.string(what + " version")
        cls = self.string(what + " class name") if first.startswith(b"V ") else first
        return index, cls


def read_t7(path) -> np.ndarray:
    """Read a Torch7 ``torch.FloatTensor`` / ``torch.DoubleTensor`` file.

    Returns a new C-ordered array of the tensor's shape (float32 or float64;
    LS3D-W landmarks: ``(68, 2)`` float32, 0-based pixels).  Raises
    :class:`T7Error` for any other content (other tensor types, tables,
    numbers, corrupt or truncated files).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise T7Error(f"{path}: cannot read ({e})") from e
    r = _Reader(data, path)
    typ = r.int("type tag")
    if typ != TYPE_TORCH:
        raise T7Error(
            f"{path}: expected a Torch7 tensor (type tag {TYPE_TORCH}, torch object), found type tag {typ} "
            f"({_TYPE_NAMES.get(typ, 'unknown')}); is this a binary torch.save file?"
        )
    _, cls = r.torch_header("tensor")
    if cls not in _TENSORS:
        raise T7Error(
            f"{path}: expected torch.FloatTensor or torch.DoubleTensor, found {cls.decode('latin-1')!r}"
        )
    storage_cls, dtype = _TENSORS[cls]
    ndim = r.int("tensor dimension count")
    if not 0 <= ndim <= 32:
        raise T7Error(f"{path}: implausible tensor dimension count {ndim}")
    size = r.longs(ndim, "tensor sizes")
    stride = r.longs(ndim, "tensor strides")
    offset = r.long("storage offset") - 1
    styp = r.int("storage type tag")
    if styp == TYPE_NIL or ndim == 0:
        return np.empty((0,), dtype.newbyteorder("="))
    if styp != TYPE_TORCH:
        raise T7Error(f"{path}: tensor storage has type tag {styp} ({_TYPE_NAMES.get(styp, 'unknown')}), expected a torch storage object")
    _, scls = r.torch_header("storage")
    if scls != storage_cls:
        raise T7Error(f"{path}: a {cls.decode()} with storage {scls.decode('latin-1')!r}, expected {storage_cls.decode()}")
    n = r.long("storage size")
    if n < 0:
        raise T7Error(f"{path}: negative storage size {n}")
    storage = np.frombuffer(r.take(n * dtype.itemsize, "storage data"), dtype)
    if any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise T7Error(f"{path}: invalid tensor geometry size={size} stride={stride} offset={offset}")
    if 0 not in size:
        last = offset + sum((sz - 1) * st for sz, st in zip(size, stride))
        if last >= n:
            raise T7Error(f"{path}: tensor of size {size}, stride {stride}, offset {offset} reaches element {last} of a {n}-element storage")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=[dtype.itemsize * s for s in stride])
    return np.array(view, dtype=dtype.newbyteorder("="), order="C")

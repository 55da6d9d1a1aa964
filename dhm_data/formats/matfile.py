"""Reading the MATLAB v5 label files of 300W-LP and AFLW2000-3D, fast and robustly.

:func:`load_mat` returns exactly what ``scipy.io.loadmat(path,
mat_dtype=True)`` returns (same keys in the same order, same values, shapes
and dtypes), but reads the dataset's small files with a specialised parser
that is several times faster than scipy's generic machinery.  Whatever the
parser does not handle, or finds inconsistent, is handed to scipy, so the
fast path only changes speed, never results or errors.

The format is MathWorks' "MAT-File Format" document (Level 5 MAT-files):

* a 128-byte header: 116 bytes of descriptive text, 8 bytes of subsystem
  offset, a uint16 version (0x0100) and the endian indicator ``"IM"`` when
  written little-endian (``"MI"`` big-endian);
* then data elements, each an 8-byte tag (data type uint32, number of bytes
  uint32) followed by its data.  The data types used here: miINT8=1,
  miUINT8=2, miINT16=3, miUINT16=4, miINT32=5, miUINT32=6, miSINGLE=7,
  miDOUBLE=9, miINT64=12, miUINT64=13, miMATRIX=14, miCOMPRESSED=15 (a zlib
  stream holding one miMATRIX element), miUTF8=16;
* a "small data element" packs a payload of at most 4 bytes into its tag:
  the upper 16 bits of the first uint32 hold the byte count, the lower 16 the
  type, the payload sits in the second uint32;
* sub-elements of an miMATRIX are padded to 8-byte boundaries; an
  miMATRIX holds, in order: array flags (miUINT32, 8 bytes: flags byte with
  complex=0x08, global=0x04, logical=0x02 bits above the class byte, then
  nzmax), dimensions (miINT32), name (miINT8), then the real part;
* array class codes: mxCELL_CLASS=1, mxSTRUCT_CLASS=2, mxOBJECT_CLASS=3,
  mxCHAR_CLASS=4, mxSPARSE_CLASS=5, mxDOUBLE_CLASS=6, mxSINGLE_CLASS=7,
  mxINT8_CLASS=8, mxUINT8_CLASS=9, mxINT16_CLASS=10, mxUINT16_CLASS=11,
  mxINT32_CLASS=12, mxUINT32_CLASS=13, mxINT64_CLASS=14, mxUINT64_CLASS=15;
* the data type of the real part may be narrower than the class: MATLAB
  stores an all-zero or small-integer double array as uint8 / int16 data.
  ``mat_dtype=True`` (and this module) return the class's type (float64 for
  double) with the values converted.
* arrays are stored column-major: the result has shape ``dims`` with the
  values in Fortran order (F-contiguous arrays, as scipy returns them).

The fast path handles little-endian v5 files whose variables that are read
are real, non-sparse, non-logical, non-global numeric arrays of any number of
dimensions, stored plain or compressed.  Everything else -- big-endian files,
v4 and v7.3 files, char / cell / struct / sparse / complex / logical arrays
among the variables read, duplicate names, unknown data types, any size or
padding inconsistency, a corrupt zlib stream -- goes to ``scipy.io.loadmat``.
One exception: a numeric array whose data element has an unknown type code
makes scipy 1.17 crash the process (segmentation fault), so that damage is
reported here as a :class:`DatasetError` instead.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from dhm_data.errors import DatasetError
from dhm_data.formats.files import read_regular_file, require_file

__all__ = ["load_mat"]

_MI_INT8, _MI_INT32, _MI_MATRIX, _MI_COMPRESSED, _MI_UTF8 = 1, 5, 14, 15, 16
_MI_UINT32 = 6
_MX_OPAQUE_CLASS = 17
_FLAG_BITS = 0x0E00  # logical (bit 9), global (bit 10), complex (bit 11)
_MAX_DIMS = 32  # numpy's limit; scipy rejects more
# scipy decompresses miCOMPRESSED payloads in blocks of this size and checks
# that the last block was consumed; larger payloads go to scipy.
_ZLIB_BLOCK = 131072
_MAX_FAST_BYTES = 1 << 26  # bigger files (never label files) are streamed by scipy

# array class -> dtype returned with mat_dtype=True (little-endian file)
_CLASS_DTYPES = {
    6: np.dtype("<f8"), 7: np.dtype("<f4"), 8: np.dtype("i1"), 9: np.dtype("u1"), 10: np.dtype("<i2"),
    11: np.dtype("<u2"), 12: np.dtype("<i4"), 13: np.dtype("<u4"), 14: np.dtype("<i8"), 15: np.dtype("<u8"),
}
# data element type -> dtype of the stored numbers
_DATA_DTYPES = {
    1: np.dtype("i1"), 2: np.dtype("u1"), 3: np.dtype("<i2"), 4: np.dtype("<u2"), 5: np.dtype("<i4"),
    6: np.dtype("<u4"), 7: np.dtype("<f4"), 9: np.dtype("<f8"), 12: np.dtype("<i8"), 13: np.dtype("<u8"),
}
# data types scipy also accepts for a numeric array (miUTF8/16/32): left to it
_SCIPY_ONLY_DATA_TYPES = (16, 17, 18)
_TAG = struct.Struct("<II")
_HEAD_2D = struct.Struct("<6I2I2i2I")  # miMATRIX tag, array-flags tag, flags, nzmax, dims tag, 2 dims, name tag
_HEADER_TAIL = b"\x00\x01IM"  # version 0x0100 little-endian, endian indicator


class _Fallback(Exception):
    """The fast parser declines the file; scipy reads it."""


class _Corrupt(Exception):
    """A damage scipy cannot report: it crashes the process (segmentation
    fault / bus error, scipy 1.17) when a numeric array's data element has a
    type code outside its table, so the fast parser reports it instead."""


def _element(buf: bytes, pos: int, end: int):
    """``(type, nbytes, data_start, next_pos)`` of the data element whose tag
    is at ``pos``, for the regular and the small-data-element formats."""
    mtype, nbytes = _TAG.unpack_from(buf, pos)
    if mtype >> 16:  # small data element: nbytes in the upper 16 bits
        nbytes = mtype >> 16
        if nbytes > 4:
            raise _Fallback
        mtype &= 0xFFFF
        start, nxt = pos + 4, pos + 8
    else:
        start = pos + 8
        nxt = start + nbytes + (-nbytes % 8)
    if start + nbytes > end:
        raise _Fallback
    return mtype, nbytes, start, nxt


def _matrix(buf: bytes, pos: int, end: int, compressed: bool, wanted):
    """``(name, array)`` of the miMATRIX element whose tag is at ``pos`` and
    which must fit before ``end``; ``array`` is None when ``name`` is not in
    ``wanted`` (its data is then not parsed)."""
    # the common layout in one unpack: miMATRIX tag, array flags, 2-D dims, name tag
    (mtype, _, ftype, fbytes, flags, _, dtype_, nbytes, d0, d1, ntype, nlen) = _HEAD_2D.unpack_from(buf, pos)
    if mtype != _MI_MATRIX or ftype != _MI_UINT32 or fbytes != 8:
        raise _Fallback
    mclass = flags & 0xFF
    if mclass == _MX_OPAQUE_CLASS:  # no dims nor name; scipy names it 'None'
        raise _Fallback
    if dtype_ == _MI_INT32 and nbytes == 8 and pos + 48 <= end:
        dims = (d0, d1)
        p = pos + 40
        if ntype >> 16:  # small data element
            nlen = ntype >> 16
            ntype &= 0xFFFF
            start, p = p + 4, p + 8
            if nlen > 4:
                raise _Fallback
        else:
            start = p + 8
            p = start + nlen + (-nlen % 8)
            if start + nlen > end:
                raise _Fallback
    else:  # any number of dimensions, small-data-element dims
        dtype_, nbytes, start, p = _element(buf, pos + 24, end)
        ndims = nbytes >> 2
        if dtype_ != _MI_INT32 or nbytes & 3 or not 1 <= ndims <= _MAX_DIMS:
            raise _Fallback
        dims = struct.unpack_from(f"<{ndims}i", buf, start)
        ntype, nlen, start, p = _element(buf, p, end)
    raw = buf[start:start + nlen]
    if ntype != _MI_INT8 and not (ntype == _MI_UTF8 and raw.isascii()):
        raise _Fallback
    name = raw.decode("latin1")
    if not name:  # a function workspace: scipy keeps it unprocessed
        raise _Fallback
    if wanted is not None and name not in wanted:
        return name, None
    cls = _CLASS_DTYPES.get(mclass)
    if cls is None or flags & _FLAG_BITS:
        raise _Fallback
    dtype_, nbytes, start, p = _element(buf, p, end)
    stored = _DATA_DTYPES.get(dtype_)
    if stored is None and dtype_ not in _SCIPY_ONLY_DATA_TYPES:
        raise _Corrupt(f"variable {name!r}: data element type {dtype_} is not a MATLAB numeric data type")
    if stored is None or p > end or (compressed and p != end):
        # scipy checks that a compressed element is consumed exactly
        raise _Fallback
    count = 1
    for d in dims:
        if d < 0:
            raise _Fallback
        count *= d
    if nbytes != count * stored.itemsize:
        raise _Fallback
    return name, np.ndarray(dims, stored, buf, start, order="F").astype(cls)


def _parse_v5(data: bytes, names):
    """What ``scipy.io.loadmat(..., mat_dtype=True, variable_names=names)``
    returns for the v5 file ``data``, or None when the fast path declines."""
    if len(data) < 128 or data[124:128] != _HEADER_TAIL or 0 in data[:4]:
        return None
    out = {"__header__": data[:116].strip(b" \t\n\x00"), "__version__": "1.0", "__globals__": []}
    remaining = None if names is None else list(names)
    pos, size = 128, len(data)
    view, tag, inflate, matrix = memoryview(data), _TAG.unpack_from, zlib.decompress, _matrix
    while pos < size:
        mtype, nbytes = tag(data, pos)  # struct.error when < 8 bytes remain
        start = pos + 8
        pos = start + nbytes
        if nbytes == 0 or pos > size:
            return None
        if mtype == _MI_COMPRESSED:
            if nbytes > _ZLIB_BLOCK:
                return None
            buf = inflate(view[start:pos])
            name, arr = matrix(buf, 0, len(buf), True, remaining)
        elif mtype == _MI_MATRIX:
            name, arr = matrix(data, start - 8, pos, False, remaining)
        else:
            return None
        if name in out:  # scipy warns about duplicates: let it
            return None
        if arr is None:
            continue
        out[name] = arr
        if remaining is not None:
            remaining.remove(name)
            if not remaining:
                break
    return out


def load_mat(path, variable_names=None) -> dict:
    """The variables of a MATLAB v5 ``.mat`` file, exactly as
    ``scipy.io.loadmat(path, mat_dtype=True)`` returns them: a dict with
    ``__header__`` (bytes), ``__version__`` (``"1.0"``), ``__globals__``
    (list) and one array per variable in file order, shaped as stored
    (MATLAB ``dims``, column-major values, F-contiguous) with the dtype of
    the MATLAB class (float64 for double even when MATLAB stored the data
    compactly as uint8 / int16, float32 for single, the integer dtype for int
    classes).

    ``path``: str or path-like.  ``variable_names`` (a str or an iterable of
    str): read only those; names absent from the file are simply absent from
    the result.

    Raises :class:`DatasetError` naming the file when it is missing, not a
    regular file, a v7.3 (HDF5) file or not readable as a v5 file."""
    if isinstance(variable_names, str):
        names = [variable_names]
    elif variable_names is not None:
        names = list(variable_names)
    else:
        names = None
    try:
        data = read_regular_file(path, max_size=_MAX_FAST_BYTES)  # None: not a regular file, or big
    except (OSError, TypeError):
        data = None
    if data is not None:
        try:
            out = _parse_v5(data, names)
        except (_Fallback, struct.error, zlib.error, ValueError, TypeError, KeyError, IndexError, OverflowError):
            out = None
        except _Corrupt as e:
            raise DatasetError(f"{path}: cannot read as a MATLAB v5 .mat file ({e})") from None
        if out is not None:
            return out
    path = Path(path)
    require_file(path, "label file")  # names what is wrong with the path, if anything
    return _scipy_load(path, names)


def _scipy_load(path: Path, names) -> dict:
    import scipy.io  # only the fallback needs it, and it costs 0.3 s to import in every build process

    try:
        return scipy.io.loadmat(path, mat_dtype=True, variable_names=names)
    except NotImplementedError as e:  # v7.3 files are HDF5
        raise DatasetError(f"{path}: MATLAB v7.3 (HDF5) .mat files are not the dataset's format; expected v5 ({e})") from e
    except Exception as e:  # scipy raises several types for corrupt files
        raise DatasetError(f"{path}: cannot read as a MATLAB v5 .mat file ({type(e).__name__}: {e})") from e


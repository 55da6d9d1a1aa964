"""Direct decoding of one-chunk-per-sample Blosc datasets, bypassing HDF5.

h5py reads a chunk through the HDF5 filter pipeline (about 3x the cost of the
decompression itself for a 150 KB DHM).  When every chunk of a dataset is a
plain Blosc frame (or stored unfiltered because Blosc could not shrink it:
HDF5 then sets bit 0 of the chunk's filter mask), the chunk's bytes can be
decompressed straight from a memory map of the file into the caller's buffer
with ``blosc_decompress_ctx`` of the Blosc library that hdf5plugin ships.
Where that library cannot be loaded (or ``DHM_DATA_NO_DIRECT_BLOSC`` is set)
the callers fall back to h5py.

The Blosc frame header (https://github.com/Blosc/c-blosc/blob/main/README_HEADER.rst):
bytes 4-7 the uncompressed size, bytes 12-15 the compressed size, both
little-endian uint32.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

_DECODER = None


def blosc_decoder():
    """``blosc_decompress_ctx(src, dst, dst_size, n_threads) -> int`` from
    hdf5plugin's Blosc filter library (ctypes), or None where it cannot be
    loaded."""
    global _DECODER
    if _DECODER is None:
        _DECODER = False
        if os.environ.get("DHM_DATA_NO_DIRECT_BLOSC"):
            return None
        try:
            import hdf5plugin  # deferred with h5py: only a reader of Blosc chunks needs it

            for name in ("libh5blosc.so", "libh5blosc.dylib", "h5blosc.dll", "libh5blosc.dll"):
                path = os.path.join(hdf5plugin.PLUGIN_PATH, name)
                if os.path.exists(path):
                    fn = ctypes.CDLL(path).blosc_decompress_ctx
                    fn.restype = ctypes.c_int
                    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                    _DECODER = fn
                    break
        except Exception:   # no plugin library, or not loadable here: h5py reads instead
            _DECODER = False
    return _DECODER or None


def chunk_table(ds, n: int, sample_bytes: int, filemap: np.ndarray):
    """``(addresses, raw)`` of the ``n`` per-sample chunks of the h5py dataset
    ``ds``: absolute addresses (ints) of each chunk's bytes inside the
    ``np.memmap`` ``filemap`` of the whole file, and per chunk True where it
    is stored unfiltered (exactly ``sample_bytes`` bytes) rather than as a
    Blosc frame.  None when any chunk is missing, filtered otherwise, out of
    the file, or has a header that disagrees with its size (h5py must read)."""
    offsets = np.full(n, -1, np.int64)
    sizes = np.zeros(n, np.int64)
    masks = np.zeros(n, np.int64)

    def visit(c):
        offsets[c.chunk_offset[0]] = c.byte_offset
        sizes[c.chunk_offset[0]] = c.size
        masks[c.chunk_offset[0]] = c.filter_mask

    try:
        ds.id.chunk_iter(visit)
    except Exception:   # older HDF5 without H5Dchunk_iter
        for i in range(n):
            visit(ds.id.get_chunk_info(i))
    raw = masks == 1
    if (offsets < 0).any() or ((masks != 0) & ~raw).any() or (sizes < 16).any() \
            or (offsets + sizes > len(filemap)).any() or (sizes[raw] != sample_bytes).any():
        return None
    comp = ~raw
    head = filemap[offsets[comp][:, None] + np.arange(16)].copy()
    nbytes = head[:, 4:8].copy().view("<u4")[:, 0]
    cbytes = head[:, 12:16].copy().view("<u4")[:, 0]
    if (nbytes != sample_bytes).any() or (cbytes != sizes[comp]).any():
        return None
    return (offsets + filemap.ctypes.data).tolist(), raw.tolist()

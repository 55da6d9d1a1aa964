"""One codec per storage kind: how a field's values become HDF5 bytes and back.

Each codec is the single owner of its kind's behaviour, used by the writer,
the reader (and through it ``ShardDataset``) and the verifier, so that they
cannot disagree (the design of ffcv's fields, https://github.com/libffcv/ffcv):

- :meth:`Codec.encode` checks a column against the field's schema entry and
  returns its stored form;
- :meth:`Codec.create` makes the HDF5 dataset (layout, filter, attributes);
- :meth:`Codec.crcs` / :meth:`Codec.digest`: the per-sample CRC32 of the
  stored bytes and the field's sha256;
- :meth:`Codec.open` returns a :class:`Source`, the per-process read state of
  one field of one open shard, whose :meth:`Source.decode` writes the stored
  values of chosen samples into a caller's buffer;
- :meth:`Codec.read_stored` reads a whole column through HDF5 for
  verification, listing the samples HDF5 cannot read.

Storage kinds (chosen by ``benchmarks/storage.py``; see docs/shards.md):

``raw``
    contiguous, unfiltered; memory-mapped by the reader at the dataset's byte
    offset (natural photos compress losslessly only 1.04-1.19x: a filter
    would cost read speed for almost no space).
``u8q-lz4``
    values in [0, 1] stored as ``uint8 round(255 v)`` (error <= 0.5/255),
    one chunk per sample, Blosc-LZ4 without shuffle; decoded straight from
    the file's memory map (:mod:`dhm_data.shards.blosc`) or through h5py.
``u8q-raw``
    the same quantisation, contiguous and unfiltered (memory-mapped).
``small``
    contiguous, unfiltered small per-sample arrays, loaded whole per process.
``text``
    variable-length UTF-8 strings, loaded whole per process.
"""

from __future__ import annotations

import ctypes
import hashlib
import zlib

import numpy as np

from dhm_data.shards.blosc import blosc_decoder, chunk_table

RAW = "raw"
U8Q_LZ4 = "u8q-lz4"
U8Q_RAW = "u8q-raw"
SMALL = "small"
TEXT = "text"

#: Quantisation of ``u8q-*`` storage: stored = round(value * QUANT_LEVELS).
QUANT_LEVELS = 255
#: Largest absolute error of a dequantised ``u8q-*`` value in [0, 1].
QUANT_MAX_ERROR = 0.5 / QUANT_LEVELS
#: Blosc-LZ4 filter settings of ``u8q-lz4`` (see benchmarks/storage.py).
BLOSC_LZ4 = {"cname": "lz4", "clevel": 5, "shuffle": 0}
#: What a field's sha256 covers (dataset attribute ``sha256_of``).
SHA256_OF = ("bytes", "crc32")


def h5py_module():
    """h5py with hdf5plugin's filters registered in this process."""
    import h5py  # deferred: importing h5py + the HDF5 plugins costs ~0.2 s of command start-up
    import hdf5plugin  # noqa: F401  (registers the Blosc filter in this process)

    return h5py


# ------------------------------------------------------------------ quantisation
def quantise(values: np.ndarray, block: int = 16, out: np.ndarray | None = None) -> np.ndarray:
    """[0, 1] floats -> uint8 ``round(255 v)`` (values are clipped first),
    into ``out`` (uint8, same shape) when given.

    Works in blocks of ``block`` rows of the first axis (cache friendly)."""
    v = np.asarray(values)
    if out is None:
        out = np.empty(v.shape, np.uint8)
    if v.ndim == 0:
        return np.uint8(np.rint(np.clip(float(v), 0.0, 1.0) * QUANT_LEVELS))
    tmp = None
    for i in range(0, len(v), block):
        blk = v[i:i + block]
        if tmp is None or tmp.shape != blk.shape:
            tmp = np.empty(blk.shape, np.float32)
        np.multiply(blk, np.float32(QUANT_LEVELS), out=tmp, casting="unsafe")
        np.clip(tmp, 0.0, float(QUANT_LEVELS), out=tmp)
        np.rint(tmp, out=tmp)
        np.copyto(out[i:i + block], tmp, casting="unsafe")
    return out


def dequantise(stored: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 -> float32 ``u / 255`` (correctly rounded; into ``out`` when given)."""
    if out is None:
        out = np.empty(stored.shape, np.float32)
    np.copyto(out, stored, casting="unsafe")
    np.divide(out, np.float32(QUANT_LEVELS), out=out)
    return out


# ------------------------------------------------------------------ sources (reading)
class Source:
    """Per-process read state of one field of one open shard.

    ``whole``: the stored values are held in memory (``values``), so their
    CRC32s are checked once when the field is opened, not per read."""

    whole = False
    values = None
    #: How the values are read: "memory", "memmap", "hdf5" or "blosc".
    access = ""

    def decode(self, loc: np.ndarray, dst: np.ndarray, pos: np.ndarray, fail) -> None:
        """Write the stored values of samples ``loc`` (local indices, int64
        array) into ``dst[pos]`` (``dst``: stored dtype, first axis = batch).
        ``fail(i, what, cause)`` raises the reader's error for sample ``i``."""
        raise NotImplementedError


class _InMemory(Source):
    """Values loaded whole (small arrays: ndarray; text: numpy ``str`` array)."""

    whole = True
    access = "memory"

    def __init__(self, values):
        self.values = values

    def decode(self, loc, dst, pos, fail):
        dst[pos] = self.values[loc]


class _MemmapRows(Source):
    """Rows of a contiguous, unfiltered dataset mapped with ``np.memmap``."""

    access = "memmap"

    def __init__(self, path, ds, n):
        mm = np.memmap(path, dtype=ds.dtype, mode="r", offset=ds.id.get_offset(), shape=(n,) + ds.shape[1:])
        self.rows = mm.view(np.ndarray)   # plain view: cheaper indexing, keeps the map alive

    def decode(self, loc, dst, pos, fail):
        rows = self.rows
        for p, i in zip(pos.tolist(), loc.tolist()):
            dst[p] = rows[i]


class _H5Rows(Source):
    """Rows read one at a time through h5py (never by HDF5 fancy indexing)."""

    access = "hdf5"

    def __init__(self, ds):
        self.ds = ds

    def decode(self, loc, dst, pos, fail):
        ds = self.ds
        for p, i in zip(pos.tolist(), loc.tolist()):
            try:
                dst[p] = ds[i]
            except Exception as e:   # any HDF5/filter failure: a damaged sample
                fail(i, f"unreadable through HDF5 ({type(e).__name__}: {e})", e)


class _BloscChunks(Source):
    """Per-sample Blosc chunks decompressed from the file's memory map."""

    access = "blosc"

    def __init__(self, table, sample_bytes, filemap):
        self.filemap = filemap   # the addresses point into this map: it lives as long as they are used
        self.addr, self.raw = table
        self.sample_bytes = sample_bytes
        self.decoder = blosc_decoder()

    def decode(self, loc, dst, pos, fail):
        if not dst.flags.c_contiguous:
            raise ValueError("Blosc chunks decode into C-contiguous buffers only")
        sz, base, dec, addr, raw = self.sample_bytes, dst.ctypes.data, self.decoder, self.addr, self.raw
        for p, i in zip(pos.tolist(), loc.tolist()):
            if raw[i]:
                ctypes.memmove(base + p * sz, addr[i], sz)
            elif dec(addr[i], base + p * sz, sz, 1) != sz:
                fail(i, "Blosc chunk failed to decompress", None)


# ------------------------------------------------------------------ codecs
def _column_shape(f, a: np.ndarray, n: int, dims: dict, bad) -> None:
    if a.ndim != 1 + len(f.shape):
        raise bad(f"expected shape (N, {', '.join(map(str, f.shape))}), found {a.shape}")
    if a.shape[0] != n:
        raise bad(f"expected {n} samples, found {a.shape[0]}")
    for d, want in zip(a.shape[1:], f.shape):
        if isinstance(want, str):
            if dims.setdefault(want, d) != d:
                raise bad(f"dimension {want} = {d} disagrees with {dims[want]} set by another field")
        elif d != want:
            raise bad(f"expected per-sample shape {f.shape}, found {a.shape[1:]}")


def _row_crcs(stored: np.ndarray) -> np.ndarray:
    stored = np.ascontiguousarray(stored)
    n = len(stored)
    flat = stored.reshape(n, -1).view(np.uint8) if stored.size else stored.reshape(n, 0)
    return np.fromiter((zlib.crc32(row) for row in flat), np.uint32, count=n)


class Codec:
    """Behaviour of one storage kind (see the module docstring)."""

    kind = ""
    #: The field is a per-sample pixel array: read sample by sample, its
    #: sha256 taken over its CRC32 column (schema v2).
    per_sample = False
    quantised = False

    def stored_dtype(self, f) -> np.dtype | None:
        """dtype of the HDF5 dataset of field ``f`` (None for text)."""
        return np.dtype(np.uint8) if self.quantised else np.dtype(f.dtype)

    def output_dtype(self, f, dhm_dtype: str = "float32") -> np.dtype:
        """dtype a reader returns (quantised fields: ``dhm_dtype``)."""
        return np.dtype(dhm_dtype) if self.quantised else np.dtype(f.dtype)

    def to_output(self, stored: np.ndarray, dhm_dtype: str = "float32", out: np.ndarray | None = None) -> np.ndarray:
        """Stored values as a reader returns them: a quantised field as float32
        ``u / 255`` when ``dhm_dtype`` is ``"float32"`` (into ``out`` when
        given), anything else as stored."""
        if self.quantised and dhm_dtype == "float32":
            return dequantise(stored, out=out)
        if out is not None:
            out[...] = stored
            return out
        return stored

    def default_sha256_of(self) -> str:
        return "crc32" if self.per_sample else "bytes"

    # ---------------------------------------------------------- writing
    def encode(self, f, values, n: int, dims: dict, bad) -> np.ndarray:
        """Check a column (first axis = sample) against ``f`` and return its
        stored form; symbolic dimensions are set in / checked against
        ``dims``; ``bad(what)`` makes the error to raise."""
        a = np.asarray(values)
        _column_shape(f, a, n, dims, bad)
        target = np.dtype(f.dtype)
        if target == np.uint8:
            if a.dtype != np.uint8:
                raise bad(f"expected uint8, found {a.dtype} (convert explicitly; no silent casts of image data)")
        elif target == np.bool_:
            if a.dtype != np.bool_:
                if a.dtype.kind not in "iu" or not np.isin(a, (0, 1)).all():
                    raise bad(f"expected bool, found {a.dtype}")
                a = a.astype(bool)
        elif target.kind == "f":
            if a.dtype.kind not in "fiu":
                raise bad(f"expected a float array, found {a.dtype}")
            a = a.astype(target, copy=False)
        return np.ascontiguousarray(a)

    def create(self, h, f, data=None, shape=None):
        """Create field ``f``'s dataset in the open h5py file ``h``: with
        ``data`` (stored form), or empty of ``shape`` (filled later)."""
        if data is not None:
            ds = h.create_dataset(f.name, data=data, track_times=False)
        else:
            ds = h.create_dataset(f.name, shape=shape, dtype=self.stored_dtype(f), track_times=False)
        return self._label(ds, f)

    def _label(self, ds, f):
        if self.quantised:
            ds.attrs["scale"] = 1.0 / QUANT_LEVELS
        ds.attrs["storage"] = self.kind
        ds.attrs["description"] = f.description
        return ds

    def crcs(self, stored) -> np.ndarray:
        """(N,) uint32 CRC32 of each sample's stored bytes (C order)."""
        return _row_crcs(np.asarray(stored))

    def digest(self, stored, sha256_of: str | None = None) -> tuple[str, np.ndarray]:
        """(sha256 hex, (N,) uint32 CRC32s) of a stored column; ``sha256_of``
        (``"bytes"`` or ``"crc32"``, default :meth:`default_sha256_of`) says
        what the sha256 covers: the stored bytes in C order or the
        little-endian CRC32 column."""
        sha256_of = sha256_of or self.default_sha256_of()
        if sha256_of not in SHA256_OF:
            raise ValueError(f"sha256_of {sha256_of!r}, expected 'bytes' or 'crc32'")
        stored = np.ascontiguousarray(stored)
        crcs = self.crcs(stored)
        digested = crcs.astype("<u4") if sha256_of == "crc32" else stored
        return hashlib.sha256(memoryview(digested).cast("B")).hexdigest(), crcs

    def digest_of_crcs(self, crcs: np.ndarray) -> str:
        """sha256 hex of a per-sample field from its CRC32 column alone
        (``sha256_of = "crc32"``: the streaming writer never holds the bytes)."""
        if not self.per_sample:
            raise ValueError(f"storage {self.kind!r}: the sha256 covers the bytes, not the CRC32s")
        return hashlib.sha256(np.asarray(crcs).astype("<u4").tobytes()).hexdigest()

    # ---------------------------------------------------------- reading
    def open(self, ds, n: int, path, filemap) -> Source:
        """Read state of ``ds`` (``n`` samples) in the file ``path``;
        ``filemap()`` returns a memory map of the whole file."""
        if ds.chunks is None and ds.compression is None and not ds._filters:
            return _MemmapRows(path, ds, n)
        return _H5Rows(ds)

    def read_stored(self, ds, n: int) -> tuple[np.ndarray, list]:
        """The whole stored column through HDF5, and ``[(i, why)]`` for the
        samples it cannot read (zeros in their place)."""
        try:
            return ds[()], []
        except Exception:   # find the unreadable samples one at a time
            stored = np.zeros(ds.shape, ds.dtype)
            bad = []
            for i in range(n):
                try:
                    stored[i] = ds[i]
                except Exception as e:
                    bad.append((i, f"unreadable ({type(e).__name__})"))
            return stored, bad


class RawCodec(Codec):
    """``raw``: contiguous, unfiltered, memory-mapped (the image crop)."""

    kind = RAW
    per_sample = True


class QuantRawCodec(Codec):
    """``u8q-raw``: [0, 1] values as ``uint8 round(255 v)``, contiguous."""

    kind = U8Q_RAW
    per_sample = True
    quantised = True

    def encode(self, f, values, n, dims, bad):
        a = np.asarray(values)
        _column_shape(f, a, n, dims, bad)
        if a.dtype == np.uint8:
            return np.ascontiguousarray(a)   # already quantise()d by the caller: stored as is
        if a.dtype.kind not in "fiu":
            raise bad(f"expected a float array, found {a.dtype}")
        for i in range(0, n, 64):
            blk = a[i:i + 64]
            lo, hi = blk.min(), blk.max()
            if not (lo >= -1e-6 and hi <= 1 + 1e-6):  # NaN fails too
                flat = blk.reshape(len(blk), -1)
                j = i + int(np.flatnonzero(~((flat >= -1e-6) & (flat <= 1 + 1e-6)).all(axis=1))[0])
                raise bad(f"sample {j}: expected values in [0, 1] for uint8 quantisation, found "
                          f"range [{a[j].min()}, {a[j].max()}]")
        return quantise(a)


class QuantLz4Codec(QuantRawCodec):
    """``u8q-lz4``: quantised as ``u8q-raw``, one Blosc-LZ4 chunk per sample."""

    kind = U8Q_LZ4

    def create(self, h, f, data=None, shape=None):
        import hdf5plugin  # deferred with h5py (see h5py_module)

        shp = data.shape if data is not None else shape
        ds = h.create_dataset(f.name, shape=shp, dtype=np.uint8, data=data, chunks=(1,) + tuple(shp[1:]),
                              track_times=False, **hdf5plugin.Blosc(**BLOSC_LZ4))
        return self._label(ds, f)

    def open(self, ds, n, path, filemap):
        sample_bytes = int(np.prod(ds.shape[1:])) * ds.dtype.itemsize
        if ds.chunks == (1,) + ds.shape[1:] and "32001" in ds._filters and blosc_decoder():
            fmap = filemap()
            try:
                table = chunk_table(ds, n, sample_bytes, fmap)
            except Exception:   # a damaged chunk index: h5py reads, naming any sample it cannot
                table = None
            if table is not None:
                return _BloscChunks(table, sample_bytes, fmap)
        return super().open(ds, n, path, filemap)


class SmallCodec(Codec):
    """``small``: contiguous small per-sample arrays, loaded whole."""

    kind = SMALL

    def open(self, ds, n, path, filemap):
        return _InMemory(ds[()])


class TextCodec(Codec):
    """``text``: variable-length UTF-8 strings, loaded whole.  The CRC32 of a
    sample is that of its UTF-8 bytes; the sha256 covers each string as an
    8-byte little-endian length followed by its UTF-8 bytes."""

    kind = TEXT

    def stored_dtype(self, f):
        return None

    def output_dtype(self, f, dhm_dtype="float32"):
        return np.dtype(str)

    def encode(self, f, values, n, dims, bad):
        vals = list(values)
        if len(vals) != n:
            raise bad(f"expected {n} samples, found {len(vals)}")
        for i, v in enumerate(vals):
            if not isinstance(v, str):
                raise bad(f"sample {i}: expected str, found {type(v).__name__}")
        return vals

    def create(self, h, f, data=None, shape=None):
        ds = h.create_dataset(f.name, data=np.array(data, dtype=object), dtype=h5py_module().string_dtype("utf-8"),
                              track_times=False)
        return self._label(ds, f)

    def crcs(self, stored):
        return np.fromiter((zlib.crc32(str(v).encode("utf-8")) for v in stored), np.uint32, count=len(stored))

    def digest(self, stored, sha256_of=None):
        h = hashlib.sha256()
        crcs = np.empty(len(stored), np.uint32)
        for i, v in enumerate(stored):
            b = str(v).encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
            crcs[i] = zlib.crc32(b)
        return h.hexdigest(), crcs

    def open(self, ds, n, path, filemap):
        return _InMemory(np.array(list(ds.asstr()[()]), dtype=str) if n else np.empty(0, "<U1"))

    def read_stored(self, ds, n):
        return ds.asstr()[()], []


#: The codec of each storage kind.
CODECS: dict[str, Codec] = {c.kind: c for c in (RawCodec(), QuantLz4Codec(), QuantRawCodec(), SmallCodec(),
                                                  TextCodec())}

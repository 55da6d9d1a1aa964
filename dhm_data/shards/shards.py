"""HDF5 shards: atomic writer, reader and verifier over :mod:`dhm_data.shards.schema`.

File layout (one file = ``N`` samples)::

    /<field>            one dataset per schema field, first axis = sample;
                        attrs: description, storage, sha256, sha256_of
    /_crc32/<field>     (N,) uint32 CRC32 of each sample's stored bytes
    file attrs          schema_version, package_version, n_samples, checksums
                        (JSON {field: sha256}), pipeline (JSON string), dataset,
                        split, ... (whatever the build passes)

The sha256 of a small or text field is taken over its stored bytes in C
order (for text, each string as an 8-byte little-endian length followed by its
UTF-8 bytes).  For the per-sample pixel fields (image, DHM: storage ``raw`` /
``u8q-*``, :attr:`dhm_data.shards.schema.Field.digest_over_crc`) it is taken over the
field's CRC32 column (little-endian uint32): hashing 300 KB per sample a second
time cost the build as much as cropping it, and a changed byte changes its
sample's CRC32 all the same.  Each dataset records which in ``sha256_of``
(``"bytes"`` or ``"crc32"``; absent means bytes).  The CRC32s name the damaged
sample when a field's digest disagrees.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

import numpy as np

from dhm_data.atomic import json_default
from dhm_data.errors import ShardCorruptError, ShardError, ShardSchemaError
from dhm_data.shards import schema
from dhm_data.shards.schema import FIELD_BY_NAME, FIELDS, SCHEMA_VERSION, TEXT, U8Q_LZ4


def _h5py():
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Blosc filter in this process)

    return h5py


# ------------------------------------------------------------------ encoding
def _text_bytes(values) -> list[bytes]:
    return [v.encode("utf-8") for v in values]


def _text_digest(encoded: list[bytes]) -> tuple[str, np.ndarray]:
    h = hashlib.sha256()
    crcs = np.empty(len(encoded), np.uint32)
    for i, b in enumerate(encoded):
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
        crcs[i] = zlib.crc32(b)
    return h.hexdigest(), crcs


def _array_digest(stored: np.ndarray, over_crc: bool) -> tuple[str, np.ndarray]:
    stored = np.ascontiguousarray(stored)
    flat = stored.reshape(len(stored), -1).view(np.uint8) if stored.size else stored.reshape(len(stored), 0)
    crcs = np.fromiter((zlib.crc32(row) for row in flat), np.uint32, count=len(stored))
    digested = crcs.astype("<u4") if over_crc else stored
    return hashlib.sha256(memoryview(digested).cast("B")).hexdigest(), crcs


def field_digest(f: schema.Field, stored, sha256_of: str | None = None) -> tuple[str, np.ndarray]:
    """(sha256 hex of the field, (N,) uint32 per-sample CRC32) of stored
    values.  ``sha256_of``: ``"bytes"`` or ``"crc32"`` (what the sha256
    covers); default: the field's :attr:`~dhm_data.shards.schema.Field.digest_over_crc`."""
    if f.is_text:
        return _text_digest(_text_bytes(stored))
    if sha256_of is None:
        sha256_of = "crc32" if f.digest_over_crc else "bytes"
    if sha256_of not in ("bytes", "crc32"):
        raise ValueError(f"field {f.name!r}: sha256_of {sha256_of!r}, expected 'bytes' or 'crc32'")
    return _array_digest(np.asarray(stored), sha256_of == "crc32")


def _encode(f: schema.Field, values, n: int, dims: dict, path: Path):
    """Validate one column against the schema and return its stored form."""
    def bad(what):
        return ShardSchemaError(f"{path}: field {f.name!r}: {what}")

    if f.is_text:
        vals = list(values)
        if len(vals) != n:
            raise bad(f"expected {n} samples, found {len(vals)}")
        for i, v in enumerate(vals):
            if not isinstance(v, str):
                raise bad(f"sample {i}: expected str, found {type(v).__name__}")
        return vals
    a = np.asarray(values)
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
    target = np.dtype(f.dtype)
    if f.quantised and a.dtype == np.uint8:
        pass  # already quantised (schema.quantise): stored as is
    elif target == np.uint8:
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
    if f.quantised and a.dtype == np.uint8:
        return np.ascontiguousarray(a)  # already schema.quantise()d by the caller
    if f.quantised:
        for i in range(0, n, 64):
            blk = a[i:i + 64]
            lo, hi = blk.min(), blk.max()
            if not (lo >= -1e-6 and hi <= 1 + 1e-6):  # NaN fails too
                flat = blk.reshape(len(blk), -1)
                bad_i = i + int(np.flatnonzero(~((flat >= -1e-6) & (flat <= 1 + 1e-6)).all(axis=1))[0])
                raise bad(f"sample {bad_i}: expected values in [0, 1] for uint8 quantisation, found "
                          f"range [{a[bad_i].min()}, {a[bad_i].max()}]")
        a = schema.quantise(a)
    return np.ascontiguousarray(a)


def _attr_value(v):
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True, default=json_default)
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, np.generic):
        return v.item()
    if v is None:
        return "null"
    return v


# ------------------------------------------------------------------ writer
def write_shard(final_path, columns: dict, attrs: dict | None = None, storage: dict | None = None) -> Path:
    """Write one shard atomically and return its path.

    ``columns``: field name -> stacked per-sample values (first axis = sample),
    exactly the fields of :data:`dhm_data.shards.schema.FIELDS` (text fields: a
    sequence of str; a quantised field takes floats in [0, 1] or the uint8
    that :func:`dhm_data.shards.schema.quantise` made of them, stored as is).  An
    empty dict writes a valid shard of 0 samples (every sample of the unit
    was rejected; it may be given ``attrs["dims"]``, e.g. ``{"S": 224}``, so
    that its 0-row columns read with the build's shapes; otherwise ``dims`` is
    set from the data).  ``attrs``: file attributes (str, numbers,
    bools; dicts/lists are stored as JSON strings); ``schema_version``,
    ``package_version``, ``n_samples`` and ``checksums`` are set here (a given
    ``n_samples`` must agree with the data).  ``storage``: optional field ->
    storage kind overriding the schema default where
    :data:`dhm_data.shards.schema.ALTERNATIVE_STORAGE` allows it (e.g.
    ``{"dhm": "u8q-raw"}``); the kind used is recorded per dataset.

    The file is written to ``.<name>.tmp-<pid>`` in the same folder, fsynced
    and ``os.replace``d into place; on any error no final file is created and
    the temporary one is removed.
    """
    from dhm_data.atomic import atomic_path

    final_path = Path(final_path)
    attrs = dict(attrs or {})
    columns = dict(columns)
    unknown = sorted(set(columns) - set(FIELD_BY_NAME))
    if unknown:
        raise ShardSchemaError(f"{final_path}: columns {unknown} are not in the shard schema (v{SCHEMA_VERSION}: "
                               f"{', '.join(schema.FIELD_NAMES)})")
    if columns:
        missing = [f.name for f in FIELDS if f.name not in columns]
        if missing:
            raise ShardSchemaError(f"{final_path}: missing fields {missing} (the schema requires all of "
                                   f"{', '.join(schema.FIELD_NAMES)})")
        n = len(columns["name"])
    else:
        n = 0
    if "n_samples" in attrs and int(attrs["n_samples"]) != n:
        raise ShardSchemaError(f"{final_path}: attribute n_samples = {attrs['n_samples']} but the columns hold {n} samples")
    kinds = _storage_kinds(final_path, storage)
    dims: dict = {}
    if "dims" in attrs:
        given = parse_json_attr(attrs.pop("dims"))
        if columns or not isinstance(given, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in given.items()):
            raise ShardSchemaError(f"{final_path}: attribute dims is set from the data; it may be given only for a "
                                   f"0-sample shard, as {{symbol: int}} (found {given!r})")
        dims = dict(given)
    stored = {f.name: _encode(f, columns[f.name], n, dims, final_path) for f in FIELDS} if columns else {}

    h5py = _h5py()
    with atomic_path(final_path) as tmp:
        digests = {}
        with h5py.File(tmp, "w", track_order=True) as h:
            if stored:
                h.create_group(schema.CRC_GROUP)
            for f in FIELDS:
                if f.name not in stored:
                    continue
                data = stored[f.name]
                sha, crcs = field_digest(f, data)
                digests[f.name] = sha
                _create_field(h, f, kinds[f.name], data=data)
                _seal_field(h, f, sha, crcs)
            _write_file_attrs(h, attrs, n, digests, dims)
    _fsync_dir(final_path.parent)
    return final_path


def _storage_kinds(final_path: Path, storage: dict | None) -> dict:
    """Field name -> storage kind: the schema's default unless ``storage``
    chooses an allowed alternative."""
    kinds = {f.name: f.storage for f in FIELDS}
    for name, kind in (storage or {}).items():
        f = schema.field(name)
        allowed = schema.ALTERNATIVE_STORAGE.get(f.storage, (f.storage,))
        if kind not in allowed:
            raise ShardSchemaError(f"{final_path}: field {name!r}: storage {kind!r} is not one of {allowed}")
        kinds[name] = kind
    return kinds


def _create_field(h, f: schema.Field, kind: str, data=None, shape=None):
    """Create the dataset of field ``f`` with ``data``, or empty with ``shape``
    (pixel fields filled later in blocks)."""
    h5py = _h5py()
    if kind == TEXT:
        ds = h.create_dataset(f.name, data=np.array(data, dtype=object), dtype=h5py.string_dtype("utf-8"),
                              track_times=False)
    elif kind == U8Q_LZ4:
        import hdf5plugin

        shp = data.shape if data is not None else shape
        ds = h.create_dataset(f.name, shape=shp, dtype=np.uint8, data=data, chunks=(1,) + tuple(shp[1:]),
                              track_times=False, **hdf5plugin.Blosc(**schema.BLOSC_LZ4))
    else:  # RAW, U8Q_RAW, SMALL: contiguous, unfiltered
        if data is not None:
            ds = h.create_dataset(f.name, data=data, track_times=False)
        else:
            ds = h.create_dataset(f.name, shape=shape, dtype=f.stored_dtype, track_times=False)
    if f.quantised:
        ds.attrs["scale"] = 1.0 / schema.QUANT_LEVELS
    ds.attrs["storage"] = kind
    ds.attrs["description"] = f.description
    return ds


def _seal_field(h, f: schema.Field, sha: str, crcs: np.ndarray) -> None:
    """Record a written field's digest (and what it covers) and its CRC32s."""
    ds = h[f.name]
    ds.attrs["sha256"] = sha
    ds.attrs["sha256_of"] = "crc32" if f.digest_over_crc else "bytes"
    h[schema.CRC_GROUP].create_dataset(f.name, data=crcs, track_times=False)


def _write_file_attrs(h, attrs: dict, n: int, digests: dict, dims: dict) -> None:
    from dhm_data import __version__

    for k, v in attrs.items():
        h.attrs[k] = _attr_value(v)
    h.attrs["schema_version"] = SCHEMA_VERSION
    h.attrs.setdefault("package_version", __version__)
    h.attrs["n_samples"] = n
    h.attrs["checksums"] = json.dumps(digests, sort_keys=True)
    h.attrs["dims"] = json.dumps(dims, sort_keys=True)


#: The per-sample pixel fields a :class:`ShardWriter` takes in blocks.
PIXEL_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.digest_over_crc)


class ShardWriter:
    """Write one shard with its pixel fields (:data:`PIXEL_FIELDS`: image, DHM)
    streamed in blocks of samples, so a build never holds a whole shard of
    pixels in memory (and reuses one warm block buffer: first-touching 300 KB
    of fresh memory per sample cost more than cropping it).

    ``n_max``: the most samples the shard will hold; ``size``: the crop side
    S.  :meth:`append` ``(b, S, S, 3)`` uint8 blocks (the DHM already
    :func:`~dhm_data.shards.schema.quantise`-d), then :meth:`finish` with the other
    fields' columns for the rows appended (fewer than ``n_max`` is allowed:
    the shard is then rewritten at its true size).  Written under
    ``.<name>.tmp-<pid>`` and renamed by :meth:`finish`; leaving the ``with``
    block without :meth:`finish` (an exception, Ctrl-C) deletes it.
    """

    def __init__(self, final_path, n_max: int, size: int, storage: dict | None = None):
        from dhm_data.atomic import temporary_path

        self.final_path = Path(final_path)
        self.kinds = _storage_kinds(self.final_path, storage)
        self.storage = dict(storage or {})
        self.n_max, self.size, self.rows = int(n_max), int(size), 0
        self.final_path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_path(self.final_path)
        self._crcs = {name: np.zeros(self.n_max, np.uint32) for name in PIXEL_FIELDS}
        self._h = _h5py().File(self.tmp, "w", track_order=True)
        try:
            for name in PIXEL_FIELDS if self.n_max else ():  # 0 rows: written by write_shard at finish
                _create_field(self._h, FIELD_BY_NAME[name], self.kinds[name], shape=(self.n_max, size, size, 3))
        except BaseException:
            self.abort()
            raise

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._h is not None:  # finish() was not reached
            self.abort()

    def abort(self) -> None:
        """Close and delete the temporary file (no final file is created)."""
        if self._h is not None:
            try:
                self._h.close()
            finally:
                self._h = None
        self.tmp.unlink(missing_ok=True)

    def append(self, **blocks: np.ndarray) -> None:
        """Append ``b`` samples: one ``(b, S, S, 3)`` uint8 block per pixel field."""
        if self._h is None:
            raise ShardSchemaError(f"{self.final_path}: append after the writer was finished or aborted")
        if set(blocks) != set(PIXEL_FIELDS):
            raise ShardSchemaError(f"{self.final_path}: append takes exactly {', '.join(PIXEL_FIELDS)}; "
                                   f"found {', '.join(sorted(blocks))}")
        b = len(blocks[PIXEL_FIELDS[0]])
        if self.rows + b > self.n_max:
            raise ShardSchemaError(f"{self.final_path}: appending {b} samples to {self.rows} exceeds the "
                                   f"{self.n_max} the writer was opened for")
        want = (b, self.size, self.size, 3)
        for name, block in blocks.items():
            if block.dtype != np.uint8 or block.shape != want:
                raise ShardSchemaError(f"{self.final_path}: field {name!r}: expected a {want} uint8 block, "
                                       f"found {block.shape} {block.dtype}")
        for name, block in blocks.items():
            block = np.ascontiguousarray(block)
            self._h[name][self.rows:self.rows + b] = block
            crcs = self._crcs[name]
            for j in range(b):
                crcs[self.rows + j] = zlib.crc32(block[j])
        self.rows += b

    def finish(self, columns: dict, attrs: dict | None = None) -> Path:
        """Write the non-pixel ``columns`` (one row per appended sample) and
        the file attributes, fsync and rename into place; returns the path."""
        if self._h is None:
            raise ShardSchemaError(f"{self.final_path}: finish after the writer was finished or aborted")
        attrs = dict(attrs or {})
        columns = dict(columns)
        if set(columns) & set(PIXEL_FIELDS):
            raise ShardSchemaError(f"{self.final_path}: pixel fields are appended, not given to finish()")
        n = self.rows
        if self.rows < self.n_max or self.n_max == 0:
            return self._finish_smaller(columns, attrs)
        if "n_samples" in attrs and int(attrs["n_samples"]) != n:
            self.abort()
            raise ShardSchemaError(f"{self.final_path}: attribute n_samples = {attrs['n_samples']} but {n} samples "
                                   "were appended")
        attrs.pop("n_samples", None)
        try:
            expected = [f.name for f in FIELDS if f.name not in PIXEL_FIELDS]
            unknown = sorted(set(columns) - set(expected))
            missing = [name for name in expected if name not in columns]
            if unknown or missing:
                raise ShardSchemaError(f"{self.final_path}: finish() needs exactly the fields {expected}; "
                                       f"missing {missing}, unknown {unknown}")
            dims = {"S": self.size}
            stored = {name: _encode(FIELD_BY_NAME[name], columns[name], n, dims, self.final_path) for name in expected}
            h = self._h
            h.create_group(schema.CRC_GROUP)
            digests = {}
            for name in PIXEL_FIELDS:
                f = FIELD_BY_NAME[name]
                crcs = self._crcs[name][:n]
                digests[name] = hashlib.sha256(crcs.astype("<u4").tobytes()).hexdigest()
                _seal_field(h, f, digests[name], crcs)
            for f in FIELDS:
                if f.name in stored:
                    sha, crcs = field_digest(f, stored[f.name])
                    digests[f.name] = sha
                    _create_field(h, f, self.kinds[f.name], data=stored[f.name])
                    _seal_field(h, f, sha, crcs)
            _write_file_attrs(h, attrs, n, {k: digests[k] for k in schema.FIELD_NAMES}, dims)
            h.close()
            self._h = None
            with open(self.tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp, self.final_path)
        except BaseException:
            self.abort()
            raise
        _fsync_dir(self.final_path.parent)
        return self.final_path

    def _finish_smaller(self, columns: dict, attrs: dict) -> Path:
        """Fewer samples than opened for (some were rejected after the file
        was sized): HDF5 cannot shrink a contiguous dataset, so the rows are
        copied block by block into a shard of the true size."""
        n = self.rows
        if n == 0:
            self.abort()
            return write_shard(self.final_path, {}, dict(attrs, dims={"S": self.size}), storage=self.storage)
        old, self._h = self._h, None
        oversized = self.tmp.with_name(self.tmp.name + "-oversized")  # the exact shard's writer takes self.tmp
        os.replace(self.tmp, oversized)
        try:
            with ShardWriter(self.final_path, n, self.size, self.storage) as exact:
                for i in range(0, n, _COPY_BLOCK):
                    exact.append(**{name: old[name][i:min(i + _COPY_BLOCK, n)] for name in PIXEL_FIELDS})
                return exact.finish(columns, attrs)
        finally:
            old.close()
            oversized.unlink(missing_ok=True)


#: Samples per read when a shard is rewritten at its true size.
_COPY_BLOCK = 32


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------ reader
def _decode_attr(v):
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    return v


@dataclass
class FieldInfo:
    """Per-field layout of one shard: per-sample ``shape``, stored ``dtype``,
    ``storage`` kind and, for an unfiltered contiguous dataset, its byte
    ``offset`` in the file (None otherwise)."""

    name: str
    shape: tuple
    dtype: np.dtype | None
    storage: str
    offset: int | None


@dataclass
class ShardInfo:
    """What a reader needs to know about a shard without holding it open."""

    path: Path
    n_samples: int
    schema_version: int
    fields: dict = dc_field(default_factory=dict)   # name -> FieldInfo
    attrs: dict = dc_field(default_factory=dict)


def _open(path, h5py=None):
    h5py = h5py or _h5py()
    try:
        return h5py.File(path, "r", rdcc_nbytes=0)
    except OSError as e:
        raise ShardCorruptError(path, [f"{path}: cannot be opened as HDF5 ({e}); the file is truncated, damaged "
                                       "or not a shard"]) from e


def _info_from_file(path: Path, h) -> ShardInfo:
    attrs = {k: _decode_attr(v) for k, v in h.attrs.items()}
    if "schema_version" not in attrs:
        raise ShardSchemaError(f"{path}: no schema_version attribute; not a dhm-data shard")
    version = int(attrs["schema_version"])
    if version not in schema.READABLE_SCHEMA_VERSIONS:
        raise ShardSchemaError(f"{path}: schema version {version}, this dhm-data reads versions "
                               f"{', '.join(map(str, schema.READABLE_SCHEMA_VERSIONS))} (rebuild the shards with this version)")
    n = int(attrs.get("n_samples", 0))
    info = ShardInfo(Path(path), n, version, {}, attrs)
    for f in FIELDS:
        if f.name not in h:
            if n:
                raise ShardSchemaError(f"{path}: field {f.name!r} is missing (schema v{SCHEMA_VERSION})")
            continue
        ds = h[f.name]
        if ds.shape[0] != n:
            raise ShardSchemaError(f"{path}: field {f.name!r} holds {ds.shape[0]} samples, the file says {n}")
        kind = _decode_attr(ds.attrs.get("storage", f.storage))
        offset = None
        if not f.is_text and ds.chunks is None and ds.compression is None and n:
            offset = ds.id.get_offset()
        info.fields[f.name] = FieldInfo(f.name, tuple(ds.shape[1:]), None if f.is_text else ds.dtype, kind, offset)
    return info


def shard_info(path) -> ShardInfo:
    """Layout and attributes of a shard (opens and closes the file)."""
    path = Path(path)
    with _open(path) as h:
        return _info_from_file(path, h)


def parse_json_attr(value):
    """A JSON-string attribute (``pipeline``, ``checksums``) as Python objects."""
    return json.loads(value) if isinstance(value, str) else value


class ShardReader:
    """Read whole fields or selected samples of one shard.

    >>> with ShardReader(path) as r:
    ...     r.n_samples, r.attrs["split"], r.pipeline
    ...     lm = r.read("landmarks_2d")          # (N, 68, 2) float32
    ...     dhm = r.read("dhm", [3, 1])          # (2, S, S, 3) float32 in [0, 1]

    Text fields come back as numpy ``str`` arrays.  ``dhm_dtype="uint8"``
    returns the stored ``round(255 v)`` instead of float32 ``v``.

    A 0-sample shard (every sample of its unit rejected: ``write_shard(path,
    {}, attrs)``) stores no field datasets; it still lists every schema field
    and reads each as 0 rows of the schema's per-sample shape and dtype
    (``image`` ``(0, S, S, 3)`` uint8, ``landmarks_2d`` ``(0, 68, 2)``
    float32, text ``(0,)`` ``str``).  A symbolic dimension (``S``, ``K``,
    ``E``) is taken from the file's ``dims`` attribute when recorded there,
    else it is 0 (the writer of an empty shard has no data to take it from):
    fields without one (landmarks, poses, names, ...) concatenate with other
    shards' columns as they are; for ``image``/``dhm``/``shape_para``/
    ``exp_para`` skip the 0-row arrays (``(0, 0, 0, 3)`` does not join
    ``(N, S, S, 3)``).
    """

    def __init__(self, path, dhm_dtype: str = "float32"):
        self.path = Path(path)
        if dhm_dtype not in ("float32", "uint8"):
            raise ValueError(f"dhm_dtype must be 'float32' or 'uint8', not {dhm_dtype!r}")
        self.dhm_dtype = dhm_dtype
        self._h = _open(self.path)
        try:
            self.info = _info_from_file(self.path, self._h)
        except BaseException:
            self._h.close()
            raise

    def close(self):
        self._h.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def n_samples(self) -> int:
        return self.info.n_samples

    @property
    def attrs(self) -> dict:
        return self.info.attrs

    @property
    def pipeline(self) -> dict | None:
        p = self.info.attrs.get("pipeline")
        return parse_json_attr(p) if p is not None else None

    @property
    def fields(self) -> list[str]:
        """Fields of the shard (every schema field, also for a 0-sample shard)."""
        return list(self.info.fields) if self.n_samples else list(schema.FIELD_NAMES)

    def _empty(self, f: schema.Field, indices) -> np.ndarray:
        """0 rows of ``f`` for a 0-sample shard (symbolic dims from ``dims`` or 0)."""
        if indices is not None and len(np.atleast_1d(np.asarray(indices))):
            bad = int(np.atleast_1d(np.asarray(indices))[0])
            raise IndexError(f"{self.path}: sample index {bad} out of range for a shard of 0 samples")
        if f.is_text:
            return np.empty(0, "<U1")
        try:
            dims = json.loads(self.attrs.get("dims") or "{}")
        except (TypeError, ValueError):
            dims = {}
        shape = tuple(int(dims.get(d, 0)) if isinstance(d, str) else d for d in f.shape)
        dtype = np.float32 if f.quantised and self.dhm_dtype == "float32" else f.stored_dtype
        return np.empty((0,) + shape, dtype)

    def read(self, name: str, indices=None) -> np.ndarray:
        """Field ``name`` for all samples or for ``indices`` (any order, repeats
        allowed; read one sample at a time, never by HDF5 fancy indexing)."""
        f = schema.field(name)
        if name not in self.info.fields:
            if self.n_samples == 0:
                return self._empty(f, indices)
            raise ShardSchemaError(f"{self.path}: field {name!r} is not in this shard")
        ds = self._h[name]
        if f.is_text:
            allv = ds.asstr()[()] if self.n_samples else np.empty(0, object)
            vals = allv if indices is None else allv[np.asarray(indices, np.int64)]
            return np.array(list(vals), dtype=str) if len(vals) else np.empty(0, "<U1")
        stored = None
        if indices is None:
            try:
                stored = ds[()]
            except Exception:
                indices = np.arange(self.n_samples)   # find the unreadable sample
        if stored is None:
            idx = np.asarray(indices, np.int64)
            stored = np.empty((len(idx),) + ds.shape[1:], ds.dtype)
            for j, i in enumerate(idx):
                try:
                    stored[j] = ds[int(i)]
                except Exception as e:
                    self._read_failure(name, int(i), e)
        if f.quantised and self.dhm_dtype == "float32":
            return schema.dequantise(stored)
        return stored


    def _read_failure(self, name: str, i: int, e: BaseException):
        try:
            names = self._h["name"].asstr()[()] if name != "name" else None
            label = f" {str(names[i])!r}" if names is not None and i < len(names) else ""
        except Exception:
            label = ""
        raise ShardError(f"{self.path}: field {name!r}: sample {i}{label}: unreadable ({type(e).__name__}: {e}); "
                         "the shard is damaged (run `dhm-data verify` on it; rerunning the `dhm-data build` that "
                         "wrote it rebuilds it)") from e


def read_columns(path, fields=None, dhm_dtype: str = "float32") -> dict:
    """All samples of ``fields`` (default: every field) of one shard as arrays."""
    with ShardReader(path, dhm_dtype=dhm_dtype) as r:
        names = list(fields) if fields is not None else r.fields
        return {name: r.read(name) for name in names}


# ------------------------------------------------------------------ verification
def verify_shard(path) -> dict:
    """Check one shard: opens (truncation), schema version, fields, shapes,
    sample counts, and every field's sha256 and per-sample CRC32.

    Returns a report ``{"path", "n_samples", "schema_version", "checksums":
    {field: sha256}, "attrs"}``; raises :class:`ShardCorruptError` (a
    :class:`ShardError`) listing every problem found, naming the file, the
    field and, for a checksum mismatch, the damaged samples (index and name).
    """
    path = Path(path)
    if not path.is_file():
        raise ShardCorruptError(path, [f"{path}: missing"])
    h5py = _h5py()
    h = _open(path, h5py)
    problems: list[str] = []
    with h:
        try:
            attrs = {k: _decode_attr(v) for k, v in h.attrs.items()}
        except Exception as e:  # damaged attribute heap
            raise ShardCorruptError(path, [f"{path}: file attributes unreadable ({e})"]) from e
        version = attrs.get("schema_version")
        if version is None or int(version) not in schema.READABLE_SCHEMA_VERSIONS:
            raise ShardCorruptError(path, [f"{path}: schema_version expected one of "
                                           f"{', '.join(map(str, schema.READABLE_SCHEMA_VERSIONS))}, found {version}"])
        n = int(attrs.get("n_samples", -1))
        if n < 0:
            raise ShardCorruptError(path, [f"{path}: no n_samples attribute"])
        try:
            expected = json.loads(attrs.get("checksums", "{}"))
        except ValueError:
            problems.append(f"{path}: checksums attribute is not valid JSON")
            expected = {}
        names = None
        if n and "name" in h:
            try:
                names = list(h["name"].asstr()[()])
            except Exception:
                names = None
        digests = {}
        for f in FIELDS:
            if n == 0:
                break
            where = f"{path}: field {f.name!r}"
            if f.name not in h:
                problems.append(f"{where}: missing")
                continue
            try:
                ds = h[f.name]
                if ds.shape[0] != n:
                    problems.append(f"{where}: holds {ds.shape[0]} samples, expected {n}")
                    continue
                if len(ds.shape) != 1 + len(f.shape):
                    problems.append(f"{where}: per-sample shape {ds.shape[1:]}, expected {f.shape}")
                    continue
                if not f.is_text and ds.dtype != f.stored_dtype:
                    problems.append(f"{where}: stored dtype {ds.dtype}, expected {f.stored_dtype}")
                    continue
                stored = ds.asstr()[()] if f.is_text else None
            except Exception as e:
                problems.append(f"{where}: unreadable ({type(e).__name__}: {e})")
                continue
            bad_samples = []
            if stored is None:
                try:
                    stored = ds[()]
                except Exception:
                    # Find the unreadable samples one at a time.
                    stored = np.zeros(ds.shape, ds.dtype)
                    for i in range(n):
                        try:
                            stored[i] = ds[i]
                        except Exception as e:
                            bad_samples.append((i, f"unreadable ({type(e).__name__})"))
            if f.is_text:
                try:
                    sha, crcs = field_digest(f, list(stored))
                except UnicodeError as e:
                    problems.append(f"{where}: invalid UTF-8 ({e})")
                    continue
            else:
                covers = _decode_attr(ds.attrs.get("sha256_of", "bytes"))
                if covers not in ("bytes", "crc32"):
                    problems.append(f"{where}: sha256_of is {covers!r}, expected 'bytes' or 'crc32'")
                    continue
                sha, crcs = field_digest(f, stored, covers)
            digests[f.name] = sha
            want = expected.get(f.name)
            ds_sha = _decode_attr(ds.attrs.get("sha256"))
            try:
                want_crc = h[schema.CRC_GROUP][f.name][()]
            except Exception:
                want_crc = None
            if want_crc is not None and len(want_crc) == n:
                for i in np.flatnonzero(want_crc != crcs):
                    if not any(i == b for b, _ in bad_samples):
                        bad_samples.append((int(i), "CRC32 mismatch"))
            if want is None:
                problems.append(f"{where}: no checksum recorded in the file attributes")
            elif sha != want or (ds_sha is not None and ds_sha != want) or bad_samples:
                if bad_samples:
                    problems.append(f"{where}: damaged samples " + ", ".join(
                        f"{i}{_sample_name(names, i)} ({why})" for i, why in sorted(bad_samples)[:20])
                        + (f" and {len(bad_samples) - 20} more" if len(bad_samples) > 20 else ""))
                else:
                    problems.append(f"{where}: sha256 mismatch (expected {want}, found {sha}); "
                                    "the per-sample CRC32 table is damaged too")
    if problems:
        raise ShardCorruptError(path, problems)
    return {"path": str(path), "n_samples": n, "schema_version": int(version), "checksums": digests,
            "attrs": attrs}


def _sample_name(names, i) -> str:
    if names is not None and i < len(names):
        return f" {names[i]!r}"
    return ""

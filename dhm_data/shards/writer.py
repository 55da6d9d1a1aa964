"""Writing shards: :func:`write_shard` (all columns at once) and
:class:`ShardWriter` (pixel fields streamed in blocks), both atomic, both
through the codecs of :mod:`dhm_data.shards.codecs`.

File layout (one file = ``N`` samples; docs/shards.md)::

    /<field>            one dataset per schema field, first axis = sample;
                        attrs: description, storage, sha256, sha256_of
    /_crc32/<field>     (N,) uint32 CRC32 of each sample's stored bytes
    file attrs          schema_version, package_version, n_samples, checksums
                        (JSON {field: sha256}), dims (JSON), pipeline (JSON
                        string), dataset, split, ... (whatever the build passes)

The sha256 of a small or text field is taken over its stored bytes; that of a
per-sample pixel field (image, DHM) over its CRC32 column (``sha256_of`` says
which: :meth:`dhm_data.shards.codecs.Codec.digest`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from dhm_data.atomic import EarlyWriteback, atomic_path, json_default, temporary_path
from dhm_data.errors import ShardSchemaError
from dhm_data.shards import schema
from dhm_data.shards.codecs import h5py_module
from dhm_data.shards.info import parse_json_attr
from dhm_data.shards.schema import FIELD_BY_NAME, FIELDS, SCHEMA_VERSION


def field_digest(f: schema.Field, stored, sha256_of: str | None = None, kind: str | None = None) -> tuple[str, np.ndarray]:
    """(sha256 hex of the field, (N,) uint32 per-sample CRC32) of stored
    values of field ``f`` in storage ``kind`` (default: the field's)."""
    return schema.codec_for(kind or f.storage).digest(stored, sha256_of)


def _encode(f: schema.Field, kind: str, values, n: int, dims: dict, path: Path):
    """Check one column against the schema and return its stored form."""
    def bad(what):
        return ShardSchemaError(f"{path}: field {f.name!r}: {what}")

    return schema.codec_for(kind).encode(f, values, n, dims, bad)


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
    stored = {f.name: _encode(f, kinds[f.name], columns[f.name], n, dims, final_path) for f in FIELDS} if columns else {}

    h5py = h5py_module()
    with atomic_path(final_path) as tmp:
        digests = {}
        with h5py.File(tmp, "w", track_order=True) as h:
            if stored:
                h.create_group(schema.CRC_GROUP)
            for f in FIELDS:
                if f.name not in stored:
                    continue
                data = stored[f.name]
                sha, crcs = field_digest(f, data, kind=kinds[f.name])
                digests[f.name] = sha
                schema.codec_for(kinds[f.name]).create(h, f, data=data)
                _seal_field(h, f, kinds[f.name], sha, crcs)
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


def _seal_field(h, f: schema.Field, kind: str, sha: str, crcs: np.ndarray) -> None:
    """Record a written field's digest (and what it covers) and its CRC32s."""
    ds = h[f.name]
    ds.attrs["sha256"] = sha
    ds.attrs["sha256_of"] = schema.codec_for(kind).default_sha256_of()
    h[schema.CRC_GROUP].create_dataset(f.name, data=crcs, track_times=False)


def _write_file_attrs(h, attrs: dict, n: int, digests: dict, dims: dict) -> None:
    from dhm_data import __version__  # the package root imports this module: read the version at call time

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
        self.final_path = Path(final_path)
        self.kinds = _storage_kinds(self.final_path, storage)
        self.storage = dict(storage or {})
        self.n_max, self.size, self.rows = int(n_max), int(size), 0
        self.final_path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_path(self.final_path)
        self._crcs = {name: np.zeros(self.n_max, np.uint32) for name in PIXEL_FIELDS}
        self._h = h5py_module().File(self.tmp, "w", track_order=True)
        self._writeback = EarlyWriteback(self.tmp)  # the final fsync then waits for the last block only
        try:
            for name in PIXEL_FIELDS if self.n_max else ():  # 0 rows: written by write_shard at finish
                f = FIELD_BY_NAME[name]
                schema.codec_for(self.kinds[name]).create(self._h, f, shape=(self.n_max, size, size, 3))
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
        self._writeback.close()
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
            self._crcs[name][self.rows:self.rows + b] = schema.codec_for(self.kinds[name]).crcs(block)
        self.rows += b
        self._writeback.start()

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
            stored = {name: _encode(FIELD_BY_NAME[name], self.kinds[name], columns[name], n, dims, self.final_path)
                      for name in expected}
            h = self._h
            h.create_group(schema.CRC_GROUP)
            digests = {}
            for name in PIXEL_FIELDS:
                codec = schema.codec_for(self.kinds[name])
                crcs = self._crcs[name][:n]
                digests[name] = codec.digest_of_crcs(crcs)
                _seal_field(h, FIELD_BY_NAME[name], self.kinds[name], digests[name], crcs)
            for f in FIELDS:
                if f.name in stored:
                    sha, crcs = field_digest(f, stored[f.name], kind=self.kinds[f.name])
                    digests[f.name] = sha
                    schema.codec_for(self.kinds[f.name]).create(h, f, data=stored[f.name])
                    _seal_field(h, f, self.kinds[f.name], sha, crcs)
            _write_file_attrs(h, attrs, n, {k: digests[k] for k in schema.FIELD_NAMES}, dims)
            h.close()
            self._h = None
            self._writeback.close()
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
        self._writeback.close()
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

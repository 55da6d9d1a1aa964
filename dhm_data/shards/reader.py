"""The one shard reader: :class:`ShardReader` (used as is by
:class:`dhm_data.load.ShardDataset`, one per shard and process) and
:func:`read_columns`.

Each field is read through the codec of its recorded storage kind
(:mod:`dhm_data.shards.codecs`): raw crops memory-mapped, DHM chunks
decompressed straight into the caller's buffer, small fields and text loaded
whole on first use.  With ``check_crc`` every sample read is compared with the
CRC32 the writer stored; every read failure is worded here, naming the file,
the field, the sample index and (when readable) its name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dhm_data.errors import ShardError, ShardSchemaError
from dhm_data.shards import schema
from dhm_data.shards.info import info_from_file, open_shard_file, parse_json_attr

DHM_DTYPES = ("uint8", "float32")


def check_dhm_dtype(dhm_dtype: str) -> str:
    """``dhm_dtype`` if it is one of :data:`DHM_DTYPES`, else ValueError."""
    if dhm_dtype not in DHM_DTYPES:
        raise ValueError(f"dhm_dtype must be 'uint8' or 'float32', not {dhm_dtype!r}")
    return dhm_dtype


class ShardReader:
    """Read whole fields or selected samples of one shard.

    >>> with ShardReader(path) as r:
    ...     r.n_samples, r.attrs["split"], r.pipeline
    ...     lm = r.read("landmarks_2d")          # (N, 68, 2) float32
    ...     dhm = r.read("dhm", [3, 1])          # (2, S, S, 3) float32 in [0, 1]

    Text fields come back as numpy ``str`` arrays.  ``dhm_dtype="uint8"``
    returns the stored ``round(255 v)`` instead of float32 ``v``.
    ``check_crc``: compare every sample read with its stored CRC32 (a
    mismatch raises :class:`~dhm_data.errors.ShardError`).

    A 0-sample shard (every sample of its unit rejected: ``write_shard(path,
    {}, attrs)``) stores no field datasets; it still lists every schema field
    and reads each as 0 rows of the schema's per-sample shape and dtype
    (``image`` ``(0, S, S, 3)`` uint8, ``landmarks_2d`` ``(0, 68, 2)``
    float32, text ``(0,)`` ``str``).  A symbolic dimension (``S``, ``K``,
    ``E``) is taken from the file's ``dims`` attribute when recorded there,
    else it is 0: fields without one concatenate with other shards' columns
    as they are; for ``image``/``dhm``/``shape_para``/``exp_para`` skip the
    0-row arrays.
    """

    def __init__(self, path, dhm_dtype: str = "float32", check_crc: bool = False):
        self.path = Path(path)
        self.dhm_dtype = check_dhm_dtype(dhm_dtype)
        self.check_crc = bool(check_crc)
        self._h = open_shard_file(self.path)
        try:
            self.info = info_from_file(self.path, self._h)
        except BaseException:
            self._h.close()
            raise
        self._sources: dict = {}   # name -> codecs.Source
        self._crcs: dict = {}      # check_crc, per-sample fields: name -> (N,) uint32 stored CRC32s
        self._bad: dict = {}       # check_crc, fields held whole: name -> (N,) bool CRC mismatch
        self._filemap = None       # np.memmap of the whole file (keeps Blosc chunk addresses valid)
        self._names = None         # sample names, loaded for the first error message that needs them
        self._fails: dict = {}     # name -> fail(i, what, cause) callback handed to the sources

    def close(self) -> None:
        self._sources.clear()
        self._filemap = None
        self._h.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -------------------------------------------------------------- metadata
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

    def codec(self, name: str) -> schema.Codec:
        """The codec of field ``name`` as stored in this shard."""
        fi = self.info.fields.get(name)
        return schema.codec_for(fi.storage if fi is not None else schema.field(name).storage)

    def output_spec(self, name: str) -> tuple[tuple, np.dtype]:
        """(per-sample shape, dtype :meth:`read` returns) of ``name``."""
        f = schema.field(name)
        shape = self.info.fields[name].shape if name in self.info.fields else self._empty_shape(f)
        return (() if f.is_text else shape), self.codec(name).output_dtype(f, self.dhm_dtype)

    def access(self, name: str) -> str:
        """How field ``name`` is read in this process: ``"memmap"``,
        ``"blosc"`` (chunks decompressed from the file's memory map),
        ``"hdf5"`` (through h5py, e.g. where a chunk index is damaged) or
        ``"memory"`` (loaded whole)."""
        return self._source(name).access

    # -------------------------------------------------------------- reading
    def read(self, name: str, indices=None) -> np.ndarray:
        """Field ``name`` for all samples or for ``indices`` (any order,
        repeats allowed), as a new array."""
        f = schema.field(name)
        if name not in self.info.fields:
            if self.n_samples == 0:
                return self._empty(f, indices)
            raise ShardSchemaError(f"{self.path}: field {name!r} is not in this shard")
        loc = np.arange(self.n_samples) if indices is None else np.asarray(indices, np.int64).reshape(-1)
        if loc.size and (loc.min() < 0 or loc.max() >= self.n_samples):
            raise IndexError(f"{self.path}: sample index {int(loc[(loc < 0) | (loc >= self.n_samples)][0])} out of "
                             f"range for a shard of {self.n_samples} samples")
        shape, dtype = self.output_spec(name)
        if f.is_text:
            return self._checked(name, loc).values[loc] if len(loc) else np.empty(0, "<U1")
        codec = self.codec(name)
        stored = np.empty((len(loc),) + shape, codec.stored_dtype(f))
        self.read_into(name, loc, stored, np.arange(len(loc)))
        return stored if stored.dtype == dtype else codec.to_output(stored, self.dhm_dtype)

    def read_into(self, name: str, loc, out: np.ndarray, pos) -> None:
        """Write the stored values of samples ``loc`` (local indices) of
        ``name`` into ``out[pos]`` (``out``: the stored dtype, C order, first
        axis = batch; text: an object array), checking their CRC32s when
        ``check_crc``.  :meth:`schema.Codec.to_output` converts them (e.g. the
        quantised DHM to float32)."""
        loc, pos = np.asarray(loc, np.int64), np.asarray(pos, np.int64)
        src = self._sources.get(name)
        if src is None or name in self._bad:
            src = self._checked(name, loc)
        src.decode(loc, out, pos, self._failure(name))
        if name in self._crcs:
            self._check_rows(name, out, pos, loc)

    def _checked(self, name: str, loc):
        """The field's source, after the CRC check of samples ``loc`` of a
        field held whole."""
        src = self._source(name)
        bad = self._bad.get(name)
        if bad is not None and len(loc) and bad[loc].any():
            i = int(np.asarray(loc)[np.flatnonzero(bad[loc])[0]])
            self._fail(name, i, "CRC32 mismatch (the stored bytes differ from those written)")
        return src

    def _source(self, name: str):
        src = self._sources.get(name)
        if src is not None:
            return src
        n = self.n_samples
        try:
            ds = self._h[name]
            src = self.codec(name).open(ds, n, self.path, self._file_map)
            crcs = self._h[schema.CRC_GROUP][name][()] if self.check_crc else None
        except ShardError:
            raise
        except Exception as e:   # a damaged dataset, filter or CRC table
            raise ShardError(f"{self.path}: field {name!r}: unreadable ({type(e).__name__}: {e}); "
                             "run `dhm-data verify` on this shard") from e
        if crcs is not None:
            if crcs.shape != (n,):
                raise ShardError(f"{self.path}: field {name!r}: CRC32 table holds {crcs.shape} values, expected "
                                 f"({n},); run `dhm-data verify` on this shard")
            if src.whole:
                self._bad[name] = self.codec(name).crcs(src.values) != crcs
            else:
                self._crcs[name] = crcs
        self._sources[name] = src
        return src

    def _file_map(self) -> np.ndarray:
        if self._filemap is None:
            self._filemap = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._filemap

    def _check_rows(self, name: str, stored: np.ndarray, pos: list, loc: list) -> None:
        crcs = self._crcs.get(name)
        if crcs is None:
            return
        got = self.codec(name).crcs(stored[pos])
        wrong = np.flatnonzero(got != crcs[loc])
        if wrong.size:
            self._fail(name, int(loc[wrong[0]]), "CRC32 mismatch (the stored bytes differ from those written)")

    # -------------------------------------------------------------- errors
    def sample_label(self, i: int) -> str:
        """`` 'name'`` of sample ``i``, or "" where the names are unreadable."""
        if self._names is None:
            src = self._sources.get("name")
            try:
                self._names = src.values if src is not None else np.array(list(self._h["name"].asstr()[()]), str)
            except Exception:   # the names themselves are damaged: the index alone names the sample
                self._names = np.empty(0, dtype=str)
        return f" {str(self._names[i])!r}" if i < len(self._names) else ""

    def _fail(self, name: str, i: int, what: str, cause: BaseException | None = None):
        raise ShardError(f"{self.path}: field {name!r}: sample {i}{self.sample_label(i)}: {what}; the shard is "
                         "damaged (run `dhm-data verify` on it; rerunning the `dhm-data build` that wrote it "
                         "rebuilds it)") from cause

    def _failure(self, name: str):
        fail = self._fails.get(name)
        if fail is None:
            fail = self._fails[name] = lambda i, what, cause: self._fail(name, int(i), what, cause)
        return fail

    # -------------------------------------------------------------- empty shards
    def _empty_shape(self, f: schema.Field) -> tuple:
        try:
            dims = json.loads(self.attrs.get("dims") or "{}")
        except (TypeError, ValueError):
            dims = {}
        return tuple(int(dims.get(d, 0)) if isinstance(d, str) else d for d in f.shape)

    def _empty(self, f: schema.Field, indices) -> np.ndarray:
        """0 rows of ``f`` for a 0-sample shard (symbolic dims from ``dims`` or 0)."""
        if indices is not None and len(np.atleast_1d(np.asarray(indices))):
            bad = int(np.atleast_1d(np.asarray(indices))[0])
            raise IndexError(f"{self.path}: sample index {bad} out of range for a shard of 0 samples")
        if f.is_text:
            return np.empty(0, "<U1")
        return np.empty((0,) + self._empty_shape(f), f.codec.output_dtype(f, self.dhm_dtype))


def read_columns(path, fields=None, dhm_dtype: str = "float32") -> dict:
    """All samples of ``fields`` (default: every field) of one shard as arrays."""
    with ShardReader(path, dhm_dtype=dhm_dtype) as r:
        names = list(fields) if fields is not None else r.fields
        return {name: r.read(name) for name in names}

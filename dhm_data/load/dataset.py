"""``ShardDataset``: a map-style dataset over built shards, read through the
one shard reader (:class:`dhm_data.shards.ShardReader`, one per shard and
process).

Nothing here imports torch: the dataset is a plain map-style dataset
(``__len__``, ``__getitem__``) that a PyTorch ``DataLoader`` accepts as is.
The readers (HDF5 handles, memory maps) are opened lazily in the process that
reads, and reopened after a fork (the owning process id is checked on every
access), so the dataset works in forked and in spawned workers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dhm_data.errors import ShardError, ShardSchemaError
from dhm_data.load.paths import shard_paths
from dhm_data.shards import ShardReader, parse_json_attr, schema, shard_info
from dhm_data.shards.reader import check_dhm_dtype

#: The DHM dtype a ``ShardDataset`` returns by default (docs/loader.md: the
#: stored bytes, like the image; scale by 1/255 where the model runs).
DEFAULT_DHM_DTYPE = "uint8"

_INHERITED: list = []   # readers inherited through fork: never used or closed in the child


class ShardDataset:
    """Map-style dataset over one or many shards.

    ``path_or_paths``: a shard file, a build split folder (``OUT/train``) or a
    list of either.  ``fields``: names to read (default: every schema field);
    only these are read.  ``dhm_dtype``: ``"uint8"`` (default: the stored
    ``round(255 v)``, as the image arrives; divide by 255 where the model
    runs) or ``"float32"`` (``u/255`` in [0, 1], error <= 0.5/255; the
    conversion writes 4x the bytes and costs about half the loader's speed:
    docs/loader.md).

    ``ds[i]`` -> dict: arrays for array fields (``image`` ``(S, S, 3)`` uint8,
    ``dhm`` ``(S, S, 3)``, ``landmarks_2d`` ``(68, 2)`` float32 crop pixels,
    ...), numpy scalars for scalar fields, ``str`` for text.
    :meth:`read_batch` returns stacked arrays (text as numpy ``str`` arrays).

    ``check_crc``: when True every sample read is checked against the
    per-sample CRC32 the writer stored (over the *stored* bytes); a mismatch
    raises :class:`~dhm_data.errors.ShardError` naming the file, the field,
    the sample index and its name.  Default False, for speed (one
    ``zlib.crc32`` pass over every image and DHM byte read; figures in
    docs/loader.md); without it a damaged sample is caught only where its
    data cannot be decoded (a broken Blosc chunk) or by ``dhm-data verify``.
    Read failures raise :class:`~dhm_data.errors.ShardError` worded by the
    reader (file, field, sample index and name, ``dhm-data verify``).
    """

    def __init__(self, path_or_paths, fields=None, dhm_dtype: str = DEFAULT_DHM_DTYPE, check_crc: bool = False):
        self.dhm_dtype = check_dhm_dtype(dhm_dtype)
        self.check_crc = bool(check_crc)
        paths = shard_paths(path_or_paths)
        infos = [i for i in (shard_info(p) for p in paths) if i.n_samples > 0]
        if not infos:
            raise ShardError(f"{paths[0].parent}: the shards hold no samples")
        first = infos[0]
        if fields is None:
            fields = list(first.fields)
        else:
            fields = list(fields)
            for name in fields:
                schema.field(name)  # KeyError for unknown names
        self.fields: tuple[str, ...] = tuple(fields)
        for info in infos:
            for name in self.fields:
                if name not in info.fields:
                    raise ShardSchemaError(f"{info.path}: field {name!r} missing")
                if info.fields[name].shape != first.fields[name].shape:
                    raise ShardSchemaError(
                        f"{info.path}: field {name!r} per-sample shape {info.fields[name].shape} differs from "
                        f"{first.fields[name].shape} in {first.path}; shards of one dataset must share one build")
        self.paths: tuple[Path, ...] = tuple(i.path for i in infos)
        self.lengths = np.array([i.n_samples for i in infos], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)])
        self.attrs: dict = dict(first.attrs)
        self._shapes = {n: first.fields[n].shape for n in self.fields}
        self._pid = None
        self._readers: dict[int, ShardReader] = {}

    # -------------------------------------------------------------- metadata
    @property
    def pipeline(self) -> dict | None:
        """The build's effective pipeline parameters (from the first shard)."""
        p = self.attrs.get("pipeline")
        return parse_json_attr(p) if p is not None else None

    def field_spec(self, name: str) -> tuple[tuple, np.dtype]:
        """(per-sample shape, output dtype) of ``name`` (text: ``()``, numpy ``str``)."""
        f = schema.field(name)
        if f.is_text:
            return (), np.dtype(str)
        return self._shapes[name], f.codec.output_dtype(f, self.dhm_dtype)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __repr__(self) -> str:
        return f"ShardDataset({len(self)} samples in {len(self.paths)} shards, fields={list(self.fields)})"

    # -------------------------------------------------------------- process-local readers
    def __getstate__(self):
        d = self.__dict__.copy()
        d["_pid"] = None
        d["_readers"] = {}
        return d

    def reader(self, k: int) -> ShardReader:
        """This process's reader of shard ``k`` (opened on first use)."""
        pid = os.getpid()
        if self._pid != pid:
            # New process (fork) or first use: never reuse a handle opened elsewhere,
            # and do not even close it here (that would be an HDF5 call on it):
            # keep it referenced, untouched, for the life of this process.
            if self._readers:
                _INHERITED.append(self._readers)
            self._readers = {}
            self._pid = pid
        r = self._readers.get(k)
        if r is None:
            r = self._readers[k] = ShardReader(self.paths[k], dhm_dtype=self.dhm_dtype, check_crc=self.check_crc)
        return r

    def close(self) -> None:
        """Close this process's readers (reopened on next access)."""
        if self._pid == os.getpid():
            for r in self._readers.values():
                r.close()
        self._readers = {}

    # -------------------------------------------------------------- reading
    def _locate(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.asarray(indices, np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            bad = idx[(idx < 0) | (idx >= n)][0]
            raise IndexError(f"sample index {bad} out of range for a dataset of {n} samples")
        fid = np.searchsorted(self.starts, idx, side="right") - 1
        return idx, fid, idx - self.starts[fid]

    def allocate(self, batch_size: int) -> dict:
        """Empty output buffers of ``batch_size`` samples for :meth:`read_batch`
        (text fields excluded: they are always built fresh)."""
        out = {}
        for name in self.fields:
            shape, dtype = self.field_spec(name)
            if not schema.field(name).is_text:
                out[name] = np.empty((batch_size,) + shape, dtype)
        return out

    def read_batch(self, indices, out: dict | None = None) -> dict:
        """Samples ``indices`` (global, any order) stacked per field.

        ``out``: optional C-contiguous buffers (e.g. from :meth:`allocate`;
        first axis >= batch); the returned arrays are then views of their
        first ``len(indices)`` rows.
        """
        idx, fid, local = self._locate(indices)
        B = idx.size
        res, stored = {}, {}
        for name, (is_text, shape, dtype, want) in self._plan().items():
            if is_text:
                res[name] = stored[name] = np.empty(B, dtype=object)
                continue
            res[name] = out[name][:B] if out is not None and name in out else np.empty((B,) + shape, dtype)
            # a converted field (the DHM as float32) is decoded into its stored bytes first
            stored[name] = res[name] if want == dtype else np.empty((B,) + shape, want)
        if len(self.paths) == 1:
            groups = [(0, np.arange(B), local)]
        else:
            groups = [(int(k), pos, local[pos]) for k in np.unique(fid) for pos in (np.flatnonzero(fid == k),)]
        for k, pos, loc in groups:
            r = self.reader(k)
            for name in self.fields:
                r.read_into(name, loc, stored[name], pos)
        for name, (is_text, _, _, _) in self._plan().items():
            if is_text:
                res[name] = stored[name].astype(str) if B else np.empty(0, dtype=str)
            elif stored[name] is not res[name]:
                schema.field(name).codec.to_output(stored[name], self.dhm_dtype, out=res[name])
        return res

    def _plan(self) -> dict:
        """name -> (is_text, per-sample shape, output dtype, stored dtype)."""
        plan = self.__dict__.get("_plan_cache")
        if plan is None:
            plan = {}
            for name in self.fields:
                f = schema.field(name)
                shape, dtype = self.field_spec(name)
                plan[name] = (f.is_text, shape, dtype, f.codec.stored_dtype(f))
            self._plan_cache = plan
        return plan

    def __getitem__(self, i) -> dict:
        if isinstance(i, (int, np.integer)):
            i = int(i)
            if i < 0:
                i += len(self)
            b = self.read_batch([i])
            return {k: (str(v[0]) if v.dtype.kind == "U" else (v[0] if v.ndim == 1 else v[0].copy()))
                    for k, v in b.items()}
        raise TypeError(f"ShardDataset indices must be integers, not {type(i).__name__} (use read_batch for many)")

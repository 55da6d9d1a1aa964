"""Framework-agnostic loading of HDF5 shards: a map-style dataset and a batched,
seeded, multi-process, rank-partitioned loader yielding dicts of numpy arrays.

Nothing here imports torch: :class:`ShardDataset` is a plain map-style dataset
(``__len__``, ``__getitem__``) that a PyTorch ``DataLoader`` accepts as is.

Read paths (MEASUREMENTS.md): raw images are ``np.memmap``-ed at the HDF5
dataset's byte offset; DHMs (one Blosc-LZ4 chunk per sample) are read one
sample at a time (never by HDF5 fancy indexing); small per-sample fields and
text are loaded whole once per process and per shard.  HDF5 handles are opened
lazily in the process that reads, and reopened after a fork (the owning
process id is checked on every access), so the dataset works in forked and in
spawned workers.

Shuffling (:func:`epoch_order`): the samples of each shard are cut into blocks
of ``block_size`` consecutive samples; the blocks of all shards are shuffled;
then the samples are shuffled within consecutive windows of ``window``
positions.  A batch thus mixes samples of up to ``window / block_size``
blocks from different shards, while a window touches only that many
contiguous regions of the files (page-cache and disk friendly).
``block_size=1`` gives a uniform random permutation.  The order depends only
on (seed, epoch, shard lengths, block_size, window): never on the number of
workers.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import tempfile
import traceback
import zlib
from pathlib import Path

import numpy as np

from dhm_data.errors import LoaderError, ShardError, ShardSchemaError
from dhm_data.geometry.landmarks68 import MIRROR_68
from dhm_data.shards import schema
from dhm_data.shards.shards import parse_json_attr, shard_info


# ------------------------------------------------------------------ paths
def shard_paths(path_or_paths) -> list[Path]:
    """Shard files of a file, a split directory (sorted ``shard-*.h5``; dot-files
    such as ``.shard-00000.h5.tmp-123`` are ignored) or a list of either."""
    items = [path_or_paths] if isinstance(path_or_paths, (str, os.PathLike)) else list(path_or_paths)
    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.glob("shard-*.h5") if q.is_file())
            if not found:
                raise ShardError(f"{p}: no shard-*.h5 files in this folder (expected a build split folder, "
                                 "e.g. OUT/train)")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise ShardError(f"{p}: no such shard file or folder")
    if not out:
        raise ShardError("no shard files given")
    return out


class _FileState:
    """Per-process open state of one shard."""

    __slots__ = ("h5", "arrays", "datasets", "chunks", "filemap", "crcs", "bad", "names")

    def __init__(self, h5):
        self.h5 = h5
        self.arrays = {}     # name -> np.memmap (raw) or in-memory array (small, text)
        self.datasets = {}   # name -> h5py dataset (chunked, read through HDF5)
        self.chunks = {}     # name -> (absolute chunk addresses, unfiltered flags) per sample
        self.filemap = None  # np.memmap of the whole file (keeps chunk addresses valid)
        self.crcs = {}       # check_crc: name -> (N,) uint32 stored CRC32s (fields read per sample)
        self.bad = {}        # check_crc: name -> (N,) bool CRC mismatch (fields loaded whole: small, text)
        self.names = None    # sample names, loaded on the first error message that needs them


_BLOSC = None
_INHERITED: list = []   # per-process states inherited through fork, never used or closed


def _blosc_decoder():
    """``blosc_decompress_ctx`` from hdf5plugin's Blosc filter library (ctypes),
    or None where it cannot be loaded (then chunks are read through h5py)."""
    global _BLOSC
    if _BLOSC is None:
        _BLOSC = False
        if os.environ.get("DHM_DATA_NO_DIRECT_BLOSC"):
            return None
        try:
            import hdf5plugin

            for name in ("libh5blosc.so", "libh5blosc.dylib", "h5blosc.dll", "libh5blosc.dll"):
                path = os.path.join(hdf5plugin.PLUGIN_PATH, name)
                if os.path.exists(path):
                    lib = ctypes.CDLL(path)
                    fn = lib.blosc_decompress_ctx
                    fn.restype = ctypes.c_int
                    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                    _BLOSC = fn
                    break
        except Exception:
            _BLOSC = False
    return _BLOSC or None


def _chunk_table(ds, n: int, sample_bytes: int, filemap: np.ndarray):
    """(addresses, raw flags) of the per-sample chunks of ``ds`` in ``filemap``:
    a chunk is a Blosc frame, or (flag True) stored unfiltered because Blosc
    could not shrink it.  None when any chunk is neither (then h5py reads)."""
    offsets = np.full(n, -1, np.int64)
    sizes = np.zeros(n, np.int64)
    masks = np.zeros(n, np.int64)

    def visit(c):
        offsets[c.chunk_offset[0]] = c.byte_offset
        sizes[c.chunk_offset[0]] = c.size
        masks[c.chunk_offset[0]] = c.filter_mask

    try:
        ds.id.chunk_iter(visit)
    except Exception:
        for i in range(n):
            visit(ds.id.get_chunk_info(i))
    raw = masks == 1
    if (offsets < 0).any() or ((masks != 0) & ~raw).any() or (sizes < 16).any() \
            or (offsets + sizes > len(filemap)).any() or (sizes[raw] != sample_bytes).any():
        return None
    # Blosc header: bytes 4-7 uncompressed size, 12-15 compressed size (little endian).
    comp = ~raw
    head = filemap[offsets[comp][:, None] + np.arange(16)].copy()
    nbytes = head[:, 4:8].copy().view("<u4")[:, 0]
    cbytes = head[:, 12:16].copy().view("<u4")[:, 0]
    if (nbytes != sample_bytes).any() or (cbytes != sizes[comp]).any():
        return None
    return (offsets + filemap.ctypes.data).tolist(), raw.tolist()


class ShardDataset:
    """Map-style dataset over one or many shards.

    ``path_or_paths``: a shard file, a build split folder (``OUT/train``) or a
    list of either.  ``fields``: names to read (default: every schema field);
    only these are read.  ``dhm_dtype``: ``"float32"`` (values in [0, 1],
    ``u/255`` of the stored uint8, error <= 0.5/255) or ``"uint8"`` (the
    stored ``round(255 v)``; divide by 255 on the device: about 2x faster
    loading).

    ``ds[i]`` -> dict: arrays for array fields (``image`` ``(S, S, 3)`` uint8,
    ``dhm`` ``(S, S, 3)``, ``landmarks_2d`` ``(68, 2)`` float32 crop pixels,
    ...), numpy scalars for scalar fields, ``str`` for text.
    :meth:`read_batch` returns stacked arrays (text as numpy ``str`` arrays).

    ``check_crc``: when True every sample read is checked against the per-sample
    CRC32 the writer stored in ``/_crc32/<field>`` (over the *stored* bytes:
    the quantised uint8 DHM row, the raw crop, the small field's row, a text's
    UTF-8 bytes); a mismatch raises :class:`~dhm_data.shards.shards.ShardError`
    naming the file, the field, the sample index and its name.  The CRC
    tables are loaded whole once per process and shard (4 bytes per sample
    and field); fields loaded whole (small arrays, text) are checked once when
    a shard is opened, the memory-mapped crops and the DHMs on every read.
    Default False, for speed: the check is one ``zlib.crc32`` pass (~4 GB/s)
    over every image and DHM byte read, about 75 us of CPU per 224x224 sample
    (2 x 150,528 bytes).  Measured on this project's 2-core machine (synthetic
    2,560-sample build, batch 64, image + DHM + landmarks + parameters,
    ``copy=False``, warm page cache), samples/s without -> with the check:
    one process 40,900 -> 9,700 (``dhm_dtype="uint8"``) and 13,000 -> 6,500
    (float32); two workers 46,300 -> 16,700 (uint8) and 15,400 -> 10,100
    (float32).  Without it a damaged sample is caught only where its data
    cannot be decoded (a broken Blosc chunk) or by ``dhm-data verify``: a
    flipped byte of a raw crop, say, is delivered as is.

    Read failures (a damaged chunk, an unreadable field) raise
    :class:`~dhm_data.shards.shards.ShardError` naming the file, the field, the
    sample index and, when the names are readable, the sample's name, and
    suggest ``dhm-data verify``.
    """

    def __init__(self, path_or_paths, fields=None, dhm_dtype: str = "float32", check_crc: bool = False):
        if dhm_dtype not in ("float32", "uint8"):
            raise ValueError(f"dhm_dtype must be 'float32' or 'uint8', not {dhm_dtype!r}")
        self.dhm_dtype = dhm_dtype
        self.check_crc = bool(check_crc)
        paths = shard_paths(path_or_paths)
        infos = [shard_info(p) for p in paths]
        infos = [i for i in infos if i.n_samples > 0]
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
        self._offsets = [{n: i.fields[n].offset for n in self.fields} for i in infos]
        self._shapes = {n: first.fields[n].shape for n in self.fields}
        self._stored = {n: first.fields[n].dtype for n in self.fields}
        self._pid = None
        self._files: dict[int, _FileState] = {}

    # -------------------------------------------------------------- metadata
    @property
    def pipeline(self) -> dict | None:
        """The build's effective pipeline parameters (from the first shard)."""
        p = self.attrs.get("pipeline")
        return parse_json_attr(p) if p is not None else None

    def field_spec(self, name: str) -> tuple[tuple, np.dtype]:
        """(per-sample shape, output dtype) of ``name`` (text: numpy ``str``)."""
        f = schema.field(name)
        if f.is_text:
            return (), np.dtype(str)
        if f.quantised:
            return self._shapes[name], np.dtype(self.dhm_dtype)
        return self._shapes[name], np.dtype(f.dtype)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __repr__(self) -> str:
        return f"ShardDataset({len(self)} samples in {len(self.paths)} shards, fields={list(self.fields)})"

    # -------------------------------------------------------------- process-local state
    def __getstate__(self):
        d = self.__dict__.copy()
        d["_pid"] = None
        d["_files"] = {}
        return d

    def _file(self, k: int) -> _FileState:
        pid = os.getpid()
        if self._pid != pid:
            # New process (fork) or first use: never reuse a handle opened elsewhere,
            # and do not even close it here (that would be an HDF5 call on it):
            # keep it referenced, untouched, for the life of this process.
            if self._files:
                _INHERITED.append(self._files)
            self._files = {}
            self._pid = pid
        st = self._files.get(k)
        if st is None:
            st = self._open(k)
            self._files[k] = st
        return st

    def _open(self, k: int) -> _FileState:
        from dhm_data.shards.shards import _open

        path = self.paths[k]
        h = _open(path)
        st = _FileState(h)
        try:
            self._open_fields(k, st)
        except BaseException:
            h.close()
            raise
        return st

    def _open_fields(self, k: int, st: _FileState) -> None:
        path = self.paths[k]
        h = st.h5
        n = int(self.lengths[k])
        for name in self.fields:
            f = schema.field(name)
            try:
                ds = h[name]
                crcs = None
                if self.check_crc:
                    crcs = h[schema.CRC_GROUP][name][()]
            except Exception as e:
                raise ShardError(f"{path}: field {name!r}: unreadable ({type(e).__name__}: {e}); "
                                 "run `dhm-data verify` on this shard") from e
            if crcs is not None and crcs.shape != (n,):
                raise ShardError(f"{path}: field {name!r}: CRC32 table holds {crcs.shape} values, expected ({n},); "
                                 "run `dhm-data verify` on this shard")
            off = self._offsets[k][name]
            if f.is_text or f.storage == schema.SMALL:
                try:
                    values = list(ds.asstr()[()]) if f.is_text else ds[()]
                except Exception as e:
                    raise ShardError(f"{path}: field {name!r}: unreadable ({type(e).__name__}: {e}); "
                                     "run `dhm-data verify` on this shard") from e
                if crcs is not None:
                    if f.is_text:
                        got = np.fromiter((zlib.crc32(v.encode("utf-8")) for v in values), np.uint32, count=n)
                    else:
                        rows = np.ascontiguousarray(values).reshape(n, int(np.prod(values.shape[1:]))).view(np.uint8)
                        got = np.fromiter((zlib.crc32(r) for r in rows), np.uint32, count=n)
                    st.bad[name] = got != crcs
                st.arrays[name] = np.array(values, dtype=str) if f.is_text else values
                continue
            if crcs is not None:
                st.crcs[name] = crcs
            if off is not None:
                mm = np.memmap(path, dtype=ds.dtype, mode="r", offset=off, shape=(n,) + ds.shape[1:])
                st.arrays[name] = mm.view(np.ndarray)   # plain view: cheaper indexing, keeps the map alive
            else:
                table = None
                if f.quantised and ds.chunks == (1,) + ds.shape[1:] and "32001" in ds._filters and _blosc_decoder():
                    if st.filemap is None:
                        st.filemap = np.memmap(path, dtype=np.uint8, mode="r")
                    try:
                        table = _chunk_table(ds, n, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize, st.filemap)
                    except Exception:   # a damaged chunk index: h5py reads, naming any sample it cannot
                        table = None
                if table is not None:
                    st.chunks[name] = table
                else:
                    st.datasets[name] = ds

    def close(self) -> None:
        """Close this process's HDF5 handles (reopened on next access)."""
        if self._pid == os.getpid():
            for st in self._files.values():
                st.arrays.clear()
                st.datasets.clear()
                st.chunks.clear()
                st.crcs.clear()
                st.bad.clear()
                st.filemap = None
                st.h5.close()
        self._files = {}

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

        ``out``: optional buffers from :meth:`allocate` (first axis >= batch);
        the returned arrays are then views of their first ``len(indices)`` rows.
        """
        idx, fid, local = self._locate(indices)
        B = idx.size
        res = {}
        for name in self.fields:
            shape, dtype = self.field_spec(name)
            if schema.field(name).is_text:
                res[name] = None
            elif out is not None and name in out:
                res[name] = out[name][:B]
            else:
                res[name] = np.empty((B,) + shape, dtype)
        text = {n: np.empty(B, dtype=object) for n in self.fields if schema.field(n).is_text}
        scratch = {}
        for k in np.unique(fid):
            k = int(k)
            pos = np.flatnonzero(fid == k)
            loc = local[pos]
            st = self._file(k)
            for name in self.fields:
                f = schema.field(name)
                bad = st.bad.get(name)
                if bad is not None and bad[loc].any():
                    self._crc_failure(k, name, int(loc[np.flatnonzero(bad[loc])[0]]))
                if f.is_text:
                    text[name][pos] = st.arrays[name][loc]
                    continue
                if f.quantised and self.dhm_dtype == "float32":
                    dst = scratch.get(name)
                    if dst is None:
                        dst = scratch[name] = np.empty((B,) + self._shapes[name], np.uint8)
                else:
                    dst = res[name]
                if name in st.chunks and dst.flags.c_contiguous:
                    addr, raw = st.chunks[name]
                    dec = _blosc_decoder()
                    sz = dst[0].nbytes
                    base = dst.ctypes.data
                    for p, i in zip(pos.tolist(), loc.tolist()):
                        if raw[i]:
                            ctypes.memmove(base + p * sz, addr[i], sz)
                        elif dec(addr[i], base + p * sz, sz, 1) != sz:
                            self._read_failure(k, name, i, "Blosc chunk failed to decompress")
                elif name in st.chunks or name in st.datasets:
                    ds = st.datasets.get(name) or st.h5[name]
                    for p, i in zip(pos.tolist(), loc.tolist()):
                        try:
                            dst[p] = ds[i]
                        except Exception as e:
                            self._read_failure(k, name, i, f"unreadable through HDF5 ({type(e).__name__}: {e})", e)
                else:
                    src = st.arrays[name]
                    if f.storage == schema.SMALL:
                        dst[pos] = src[loc]
                    else:
                        for p, i in zip(pos.tolist(), loc.tolist()):
                            dst[p] = src[i]
                crcs = st.crcs.get(name)
                if crcs is not None:
                    for p, i in zip(pos.tolist(), loc.tolist()):
                        if zlib.crc32(np.ascontiguousarray(dst[p:p + 1])) != crcs[i]:
                            self._crc_failure(k, name, i)
        for name, buf in scratch.items():
            schema.dequantise(buf, out=res[name])
        for name, arr in text.items():
            res[name] = arr.astype(str) if B else np.empty(0, dtype=str)
        return res

    # -------------------------------------------------------------- errors
    def _sample_name(self, k: int, i: int) -> str:
        """`` 'name'`` of sample ``i`` of shard ``k``, or "" where the names are unreadable."""
        st = self._file(k)
        if st.names is None:
            arr = st.arrays.get("name")
            try:
                st.names = arr if arr is not None else np.array(list(st.h5["name"].asstr()[()]), dtype=str)
            except Exception:
                st.names = np.empty(0, dtype=str)
        return f" {str(st.names[i])!r}" if i < len(st.names) else ""

    def _read_failure(self, k: int, name: str, i: int, what: str, cause: BaseException | None = None):
        raise ShardError(f"{self.paths[k]}: field {name!r}: sample {i}{self._sample_name(k, i)}: {what}; the shard "
                         "is damaged (run `dhm-data verify` on it; rerunning the `dhm-data build` that wrote it "
                         "rebuilds it)") from cause

    def _crc_failure(self, k: int, name: str, i: int):
        self._read_failure(k, name, i, "CRC32 mismatch (the stored bytes differ from those written)")

    def __getitem__(self, i) -> dict:
        if isinstance(i, (int, np.integer)):
            i = int(i)
            if i < 0:
                i += len(self)
            b = self.read_batch([i])
            return {k: (str(v[0]) if v.dtype.kind == "U" else (v[0] if v.ndim == 1 else v[0].copy()))
                    for k, v in b.items()}
        raise TypeError(f"ShardDataset indices must be integers, not {type(i).__name__} (use read_batch for many)")


# ------------------------------------------------------------------ ordering
def epoch_order(lengths, seed: int, epoch: int, shuffle: bool = True, block_size: int = 16,
                window: int = 1024) -> np.ndarray:
    """Global sample order of one epoch (same on every rank and worker).

    ``lengths``: samples per shard (global index = shard start + local index).
    Blocks of ``block_size`` consecutive samples of one shard are shuffled, then
    samples within consecutive windows of ``window`` positions.
    """
    lengths = np.asarray(lengths, np.int64)
    n = int(lengths.sum())
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    if block_size < 1 or window < 1:
        raise ValueError("block_size and window must be >= 1")
    rng = np.random.default_rng([int(seed), int(epoch)])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    b_start = np.concatenate([s + np.arange(0, L, block_size) for s, L in zip(starts, lengths)]) if n else np.zeros(0, np.int64)
    b_end = np.minimum(b_start + block_size, np.repeat(starts + lengths, -(-lengths // block_size)))
    perm = rng.permutation(len(b_start))
    b_start, b_len = b_start[perm], (b_end - b_start)[perm]
    first = np.concatenate([[0], np.cumsum(b_len)[:-1]])
    order = np.repeat(b_start - first, b_len) + np.arange(n)
    keys = rng.random(n)
    win = np.arange(n) // window
    return order[np.lexsort((keys, win))]


def rank_order(order: np.ndarray, rank: int, world_size: int, batch_size: int, drop_last: bool) -> np.ndarray:
    """This rank's slice of an epoch order.

    Every rank gets the same number of samples: ``drop_last=False`` pads the
    order by wrapping around to ``ceil(n / world_size) * world_size`` (at most
    ``world_size - 1`` samples appear twice, as DistributedSampler does), so the
    ranks together cover every sample; ``drop_last=True`` keeps
    ``floor(n / world_size / batch_size) * batch_size`` per rank (only full
    batches; the dropped tail changes with the epoch).  Rank ``r`` takes the
    ``r``-th contiguous slab.
    """
    n = len(order)
    if drop_last:
        per = (n // world_size) // batch_size * batch_size
    else:
        per = -(-n // world_size)
        need = per * world_size
        if need > n:
            order = np.concatenate([order, np.resize(order, need - n)]) if n else order
    return order[rank * per:(rank + 1) * per]


# ------------------------------------------------------------------ augmentation
class HorizontalFlip:
    """Batch transform: mirror each sample with probability ``p``.

    For a mirrored sample (``batch["hflip"]`` True): ``image`` columns are
    reversed; ``landmarks_2d``/``landmarks_3d`` get ``x -> S - 1 - x`` (0-based
    crop pixels; y and z kept) and are re-labelled with
    :data:`~dhm_data.geometry.landmarks68.MIRROR_68`; ``dhm`` is re-rendered from the
    mirrored 3D landmarks with :func:`dhm_data.prepare.dhm.render_dhm` (exactly the DHM
    a build would store for the mirrored crop: its x channel is ``w - dhm_x``
    at the mirrored pixel, ``w`` the Gaussian weight, which the stored DHM
    alone does not give); ``crop_affine`` is composed with the mirror
    ``[[-1, 0, S-1], [0, 1, 0]]`` (still source -> crop); ``yaw`` is negated.
    The 3DMM parameters and ``flipped`` (the dataset's own mirrored copies)
    are left as they are: they describe the unmirrored source sample.
    ``sigma``: DHM Gaussian std in crop pixels (:meth:`for_dataset` reads it
    from the build's pipeline).  Needs ``landmarks_3d`` to mirror a ``dhm``.
    """

    def __init__(self, p: float = 0.5, sigma: float | None = None):
        self.p = float(p)
        self.sigma = sigma

    @classmethod
    def for_dataset(cls, dataset: ShardDataset, p: float = 0.5) -> "HorizontalFlip":
        pipe = dataset.pipeline or {}
        try:
            sigma = float(pipe["dhm"]["sigma"])
        except (KeyError, TypeError):
            raise LoaderError(f"{dataset.paths[0]}: no dhm.sigma in the shard's pipeline attribute; pass sigma=") from None
        return cls(p, sigma)

    def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
        n = len(next(iter(batch.values())))
        mask = rng.random(n) < self.p
        batch["hflip"] = mask
        if not mask.any():
            return batch
        if "dhm" in batch and "landmarks_3d" not in batch:
            raise LoaderError("HorizontalFlip: mirroring the DHM needs the landmarks_3d field (add it to fields=)")
        if "dhm" in batch and self.sigma is None:
            raise LoaderError("HorizontalFlip: sigma is needed to re-render the DHM (use HorizontalFlip.for_dataset)")
        size = None
        for key in ("image", "dhm"):
            if key in batch:
                size = batch[key].shape[2]
        if size is None:
            raise LoaderError("HorizontalFlip: needs image or dhm in the batch to know the crop size")
        from dhm_data.prepare.dhm import render_dhm

        for j in np.flatnonzero(mask):
            if "image" in batch:
                batch["image"][j] = batch["image"][j][:, ::-1].copy()
            for key in ("landmarks_2d", "landmarks_3d"):
                if key in batch:
                    L = batch[key][j][MIRROR_68].copy()
                    L[:, 0] = (size - 1) - L[:, 0]
                    batch[key][j] = L
            if "dhm" in batch:
                d = render_dhm(batch["landmarks_3d"][j], size, self.sigma)
                batch["dhm"][j] = d if batch["dhm"].dtype != np.uint8 else schema.quantise(d)
            if "crop_affine" in batch:
                M = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
                A = np.vstack([batch["crop_affine"][j], [0.0, 0.0, 1.0]])
                batch["crop_affine"][j] = (M @ A)[:2]
            if "yaw" in batch:
                batch["yaw"][j] = -batch["yaw"][j]
        return batch


# ------------------------------------------------------------------ loader
def _aligned(n: int, a: int = 64) -> int:
    return (n + a - 1) // a * a


class _Layout:
    """Byte layout of one batch slot in the shared buffer."""

    def __init__(self, dataset: ShardDataset, batch_size: int):
        self.entries = []
        off = 0
        for name in dataset.fields:
            if schema.field(name).is_text:
                continue
            shape, dtype = dataset.field_spec(name)
            nbytes = batch_size * int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            self.entries.append((name, (batch_size,) + tuple(shape), dtype.str, off))
            off = _aligned(off + nbytes)
        self.slot_bytes = max(off, 64)

    def views(self, buf: np.ndarray, slot: int) -> dict:
        base = slot * self.slot_bytes
        return {name: np.ndarray(shape, np.dtype(dt), buffer=buf, offset=base + off)
                for name, shape, dt, off in self.entries}


def _buffer_folder(need: int) -> str | None:
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


def _worker_main(dataset, layout, buf_path, n_slots, task_q, result_q, current_gen, transform):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    buf = np.memmap(buf_path, dtype=np.uint8, mode="r+", shape=(n_slots * layout.slot_bytes,))
    result_q.put(("ready", os.getpid()))
    parent = os.getppid()
    while True:
        try:
            task = task_q.get(timeout=2.0)
        except queue.Empty:
            if os.getppid() != parent:   # the loader's process died without closing us
                break
            continue
        if task is None:
            break
        gen, b, slot, indices, rng_key = task
        if gen != current_gen.value:
            result_q.put((gen, b, slot, 0, None, None))
            continue
        try:
            views = layout.views(buf, slot)
            batch = dataset.read_batch(indices, out=views)
            if transform is not None:
                batch = transform(batch, np.random.default_rng(rng_key))
            extras = {}
            B = len(indices)
            for k, v in batch.items():
                view = views.get(k)
                if view is not None and isinstance(v, np.ndarray) and v.shape == view[:B].shape and v.dtype == view.dtype:
                    if not np.shares_memory(v, view):
                        view[:B] = v
                else:
                    extras[k] = v
            result_q.put((gen, b, slot, B, extras, None))
        except Exception:
            result_q.put((gen, b, slot, 0, None, traceback.format_exc()))


class Loader:
    """Batched, seeded, rank-partitioned iteration over a :class:`ShardDataset`.

    Yields dicts of C-contiguous numpy arrays (first axis = batch; text fields
    as numpy ``str`` arrays), in an order that depends only on ``seed``,
    ``epoch``, ``rank``, ``world_size``, ``batch_size``, ``drop_last``,
    ``block_size`` and ``window`` (see :func:`epoch_order`, :func:`rank_order`),
    never on ``num_workers``.  Call :meth:`set_epoch` before each epoch.

    ``num_workers`` > 0 starts that many processes (``mp_context``: a
    multiprocessing context or start-method name; default the platform's),
    kept until :meth:`close`; they fill ``prefetch`` batch slots each in a
    shared memory-mapped buffer, so batches are not pickled.  ``transform``:
    ``f(batch, rng) -> batch`` run in the workers (picklable for spawn) with a
    generator seeded by (seed, epoch, rank, batch index), e.g.
    :class:`HorizontalFlip`.  ``copy=True`` yields fresh arrays; ``copy=False``
    yields views of a reused buffer, valid until the next batch is requested
    (no copy: fastest when the batch goes straight to a device).
    """

    def __init__(self, dataset: ShardDataset, batch_size: int = 64, shuffle: bool = True, seed: int = 0,
                 epoch: int = 0, drop_last: bool = False, num_workers: int = 0, rank: int = 0, world_size: int = 1,
                 transform=None, *, block_size: int = 16, window: int = 1024, prefetch: int = 2,
                 copy: bool = True, mp_context=None, timeout: float = 300.0):
        if batch_size < 1:
            raise LoaderError(f"batch_size must be >= 1, got {batch_size}")
        if not (world_size >= 1 and 0 <= rank < world_size):
            raise LoaderError(f"rank {rank} is not in [0, world_size={world_size})")
        if num_workers < 0 or prefetch < 1:
            raise LoaderError("num_workers must be >= 0 and prefetch >= 1")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.drop_last = bool(drop_last)
        self.num_workers = int(num_workers)
        self.rank, self.world_size = int(rank), int(world_size)
        self.transform = transform
        self.block_size, self.window = int(block_size), int(window)
        self.prefetch = int(prefetch)
        self.copy = bool(copy)
        self.mp_context = mp_context
        self.timeout = float(timeout)
        self._workers = []
        self._gen = 0
        self._buffers = None

    # -------------------------------------------------------------- order
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Sample indices this rank reads in ``epoch`` (default: the current one)."""
        e = self.epoch if epoch is None else int(epoch)
        full = epoch_order(self.dataset.lengths, self.seed, e, self.shuffle, self.block_size, self.window)
        return rank_order(full, self.rank, self.world_size, self.batch_size, self.drop_last)

    def batches(self, epoch: int | None = None) -> list[np.ndarray]:
        o = self.order(epoch)
        return [o[i:i + self.batch_size] for i in range(0, len(o), self.batch_size)]

    def __len__(self) -> int:
        n = len(self.dataset)
        per = (n // self.world_size) // self.batch_size * self.batch_size if self.drop_last else -(-n // self.world_size)
        return -(-per // self.batch_size)

    def _rng_key(self, b: int) -> tuple:
        return (self.seed, self.epoch, self.rank, b, 0x68F11B)

    # -------------------------------------------------------------- iteration
    def __iter__(self):
        batches = self.batches()
        if self.num_workers == 0:
            return self._iter_local(batches)
        return self._iter_workers(batches)

    def _iter_local(self, batches):
        out = None if self.copy else self.dataset.allocate(self.batch_size)
        for b, idx in enumerate(batches):
            batch = self.dataset.read_batch(idx, out=out)
            if self.transform is not None:
                batch = self.transform(batch, np.random.default_rng(self._rng_key(b)))
            yield batch

    def _start_workers(self):
        if self._workers:
            return
        import multiprocessing as mp

        ctx = self.mp_context
        if ctx is None or isinstance(ctx, str):
            ctx = mp.get_context(ctx)
        self._layout = _Layout(self.dataset, self.batch_size)
        self._n_slots = self.num_workers * self.prefetch
        need = self._n_slots * self._layout.slot_bytes
        folder = _buffer_folder(need)
        fd, path = tempfile.mkstemp(prefix="dhm-data-loader-", dir=folder)
        try:
            os.ftruncate(fd, self._n_slots * self._layout.slot_bytes)
        finally:
            os.close(fd)
        try:
            self._buf = np.memmap(path, dtype=np.uint8, mode="r+", shape=(self._n_slots * self._layout.slot_bytes,))
            self._task_q = ctx.Queue()
            self._result_q = ctx.Queue()
            self._current = ctx.Value("q", 0, lock=False)
            for _ in range(self.num_workers):
                p = ctx.Process(target=_worker_main, daemon=True,
                                args=(self.dataset, self._layout, path, self._n_slots, self._task_q, self._result_q,
                                      self._current, self.transform))
                p.start()
                self._workers.append(p)
            ready = 0
            while ready < self.num_workers:
                msg = self._get()
                if msg[0] == "ready":
                    ready += 1
        except BaseException:
            self.close()
            raise
        finally:
            # Every worker has mapped the buffer (or failed): the name is no longer needed.
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._free = list(range(self._n_slots))

    def _get(self):
        waited = 0.0
        while True:
            try:
                return self._result_q.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
                dead = [p for p in self._workers if not p.is_alive()]
                if dead:
                    codes = ", ".join(f"pid {p.pid} exit code {p.exitcode}" for p in dead)
                    self.close()
                    raise LoaderError(f"loader worker process died ({codes})") from None
                if waited >= self.timeout:
                    self.close()
                    raise LoaderError(f"no batch from the loader workers in {self.timeout:.0f} s") from None

    def _iter_workers(self, batches):
        self._start_workers()
        self._gen += 1
        gen = self._gen
        self._current.value = gen
        layout, nb = self._layout, len(batches)
        ready: dict = {}
        state = {"next_task": 0, "held": None}

        def submit():
            while self._free and state["next_task"] < nb:
                b = state["next_task"]
                self._task_q.put((gen, b, self._free.pop(), batches[b], self._rng_key(b)))
                state["next_task"] += 1

        try:
            submit()
            for b in range(nb):
                while b not in ready:
                    g, bb, slot, B, extras, err = self._get()
                    if g != gen:   # a task of an abandoned iteration: recycle its slot
                        self._free.append(slot)
                        submit()
                        continue
                    if err is not None:
                        self._free.append(slot)
                        raise LoaderError(f"loader worker failed on batch {bb}:\n{err}")
                    ready[bb] = (slot, B, extras)
                slot, B, extras = ready.pop(b)
                views = layout.views(self._buf, slot)
                batch = {}
                for name in self.dataset.fields:
                    if name in views:
                        batch[name] = np.array(views[name][:B]) if self.copy else views[name][:B]
                    elif name in extras:
                        batch[name] = extras.pop(name)
                batch.update(extras)
                if self.copy:
                    self._free.append(slot)
                else:
                    if state["held"] is not None:
                        self._free.append(state["held"])
                    state["held"] = slot
                submit()
                yield batch
        finally:
            if state["held"] is not None:
                self._free.append(state["held"])
            for slot, _, _ in ready.values():
                self._free.append(slot)
            # Tasks of this generation still queued or running come back later
            # marked stale; their slots are freed then.

    def close(self) -> None:
        """Stop the worker processes (they are restarted on the next iteration)."""
        workers, self._workers = self._workers, []
        if not workers:
            return
        for _ in workers:
            try:
                self._task_q.put(None)
            except Exception:
                pass
        for p in workers:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for q in (self._task_q, self._result_q):
            q.close()
            q.join_thread()
        self._buf = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

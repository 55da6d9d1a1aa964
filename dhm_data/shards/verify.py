"""``verify_shard``: every check a shard can get without its source data.

Each field is read and digested by the codec of its recorded storage kind
(:mod:`dhm_data.shards.codecs`), the same object that wrote it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dhm_data.errors import ShardCorruptError
from dhm_data.shards import schema
from dhm_data.shards.codecs import SHA256_OF, h5py_module
from dhm_data.shards.info import decode_attr, open_shard_file

#: Damaged samples listed per field before "and N more".
_LISTED = 20


def verify_shard(path) -> dict:
    """Check one shard: opens (truncation), schema version, fields, shapes,
    storage kinds, sample counts, and every field's sha256 and per-sample CRC32.

    Returns a report ``{"path", "n_samples", "schema_version", "checksums":
    {field: sha256}, "attrs"}``; raises :class:`ShardCorruptError` (a
    :class:`~dhm_data.errors.ShardError`) listing every problem found, naming
    the file, the field and, for a checksum mismatch, the damaged samples
    (index and name).
    """
    path = Path(path)
    if not path.is_file():
        raise ShardCorruptError(path, [f"{path}: missing"])
    h = open_shard_file(path, h5py_module())
    problems: list[str] = []
    with h:
        try:
            attrs = {k: decode_attr(v) for k, v in h.attrs.items()}
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
            except Exception:   # damaged names: reported with the field; samples named by index
                names = None
        digests = {}
        for f in schema.FIELDS if n else ():
            sha = _verify_field(h, f, n, expected.get(f.name), names, problems, f"{path}: field {f.name!r}")
            if sha is not None:
                digests[f.name] = sha
    if problems:
        raise ShardCorruptError(path, problems)
    return {"path": str(path), "n_samples": n, "schema_version": int(version), "checksums": digests,
            "attrs": attrs}


def _verify_field(h, f: schema.Field, n: int, want: str | None, names, problems: list, where: str) -> str | None:
    """Check one field; append its problems; return its sha256 (None when it
    could not be computed)."""
    if f.name not in h:
        problems.append(f"{where}: missing")
        return None
    try:
        ds = h[f.name]
        kind = decode_attr(ds.attrs.get("storage", f.storage))
        if kind not in schema.CODECS:
            problems.append(f"{where}: storage {kind!r}, expected one of {', '.join(schema.CODECS)}")
            return None
        codec = schema.codec_for(kind)
        if ds.shape[0] != n:
            problems.append(f"{where}: holds {ds.shape[0]} samples, expected {n}")
            return None
        if len(ds.shape) != 1 + len(f.shape):
            problems.append(f"{where}: per-sample shape {ds.shape[1:]}, expected {f.shape}")
            return None
        want_dtype = codec.stored_dtype(f)
        if want_dtype is not None and ds.dtype != want_dtype:
            problems.append(f"{where}: stored dtype {ds.dtype}, expected {want_dtype}")
            return None
        stored, bad_samples = codec.read_stored(ds, n)
    except Exception as e:   # HDF5 cannot even describe or read the dataset
        problems.append(f"{where}: unreadable ({type(e).__name__}: {e})")
        return None
    covers = decode_attr(ds.attrs.get("sha256_of", "bytes"))
    if covers not in SHA256_OF:
        problems.append(f"{where}: sha256_of is {covers!r}, expected 'bytes' or 'crc32'")
        return None
    try:
        sha, crcs = codec.digest(stored, covers)
    except UnicodeError as e:
        problems.append(f"{where}: invalid UTF-8 ({e})")
        return None
    ds_sha = decode_attr(ds.attrs.get("sha256"))
    try:
        want_crc = h[schema.CRC_GROUP][f.name][()]
    except Exception:   # a missing or damaged CRC table: the sha256 alone decides
        want_crc = None
    if want_crc is not None and len(want_crc) == n:
        listed = {b for b, _ in bad_samples}
        bad_samples += [(int(i), "CRC32 mismatch") for i in np.flatnonzero(want_crc != crcs) if int(i) not in listed]
    if want is None:
        problems.append(f"{where}: no checksum recorded in the file attributes")
    elif bad_samples:
        problems.append(f"{where}: damaged samples " + ", ".join(
            f"{i}{_sample_name(names, i)} ({why})" for i, why in sorted(bad_samples)[:_LISTED])
            + (f" and {len(bad_samples) - _LISTED} more" if len(bad_samples) > _LISTED else ""))
    elif sha != want or (ds_sha is not None and ds_sha != want):
        problems.append(f"{where}: sha256 mismatch (expected {want}, found {sha}); "
                        "the per-sample CRC32 table is damaged too")
    return sha


def _sample_name(names, i) -> str:
    if names is not None and i < len(names):
        return f" {names[i]!r}"
    return ""

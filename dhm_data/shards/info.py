"""A shard's layout and attributes without holding it open: :func:`shard_info`,
and the one way the package opens a shard file (:func:`open_shard_file`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

import numpy as np

from dhm_data.errors import ShardCorruptError, ShardSchemaError
from dhm_data.shards import schema
from dhm_data.shards.codecs import h5py_module


def decode_attr(v):
    """An HDF5 attribute value as a plain Python value (bytes -> str)."""
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    return v


def parse_json_attr(value):
    """A JSON-string attribute (``pipeline``, ``checksums``) as Python objects."""
    return json.loads(value) if isinstance(value, str) else value


def open_shard_file(path, h5py=None):
    """The shard ``path`` opened read-only with h5py (no chunk cache: every
    chunk is one sample, read once); :class:`ShardCorruptError` when HDF5
    cannot open it."""
    h5py = h5py or h5py_module()
    try:
        return h5py.File(path, "r", rdcc_nbytes=0)
    except OSError as e:
        raise ShardCorruptError(path, [f"{path}: cannot be opened as HDF5 ({e}); the file is truncated, damaged "
                                       "or not a shard"]) from e


@dataclass
class FieldInfo:
    """Per-field layout of one shard: per-sample ``shape``, stored ``dtype``
    (None for text), ``storage`` kind and, for an unfiltered contiguous
    dataset, its byte ``offset`` in the file (None otherwise)."""

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


def info_from_file(path: Path, h) -> ShardInfo:
    """:class:`ShardInfo` of the open h5py file ``h`` (``path`` for messages):
    checks the schema version, that every field is there with ``n_samples``
    rows and a known storage kind."""
    attrs = {k: decode_attr(v) for k, v in h.attrs.items()}
    if "schema_version" not in attrs:
        raise ShardSchemaError(f"{path}: no schema_version attribute; not a dhm-data shard")
    version = int(attrs["schema_version"])
    if version not in schema.READABLE_SCHEMA_VERSIONS:
        raise ShardSchemaError(f"{path}: schema version {version}, this dhm-data reads versions "
                               f"{', '.join(map(str, schema.READABLE_SCHEMA_VERSIONS))} (rebuild the shards with this version)")
    n = int(attrs.get("n_samples", 0))
    info = ShardInfo(Path(path), n, version, {}, attrs)
    for f in schema.FIELDS:
        if f.name not in h:
            if n:
                raise ShardSchemaError(f"{path}: field {f.name!r} is missing (schema v{schema.SCHEMA_VERSION})")
            continue
        ds = h[f.name]
        if ds.shape[0] != n:
            raise ShardSchemaError(f"{path}: field {f.name!r} holds {ds.shape[0]} samples, the file says {n}")
        kind = decode_attr(ds.attrs.get("storage", f.storage))
        if kind not in schema.CODECS:
            raise ShardSchemaError(f"{path}: field {f.name!r}: storage {kind!r}, expected one of "
                                   f"{', '.join(schema.CODECS)}")
        offset = None
        if not f.is_text and ds.chunks is None and ds.compression is None and n:
            offset = ds.id.get_offset()
        info.fields[f.name] = FieldInfo(f.name, tuple(ds.shape[1:]), None if f.is_text else ds.dtype, kind, offset)
    return info


def shard_info(path) -> ShardInfo:
    """Layout and attributes of a shard (opens and closes the file)."""
    path = Path(path)
    with open_shard_file(path) as h:
        return info_from_file(path, h)

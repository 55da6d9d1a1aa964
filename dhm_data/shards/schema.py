"""The one definition of a shard's contents, used by the writer and the reader.

A shard is one HDF5 file holding ``N`` samples.  Every field below is one HDF5
dataset whose first axis is the sample; the per-sample shape may use symbolic
dimensions that are taken from the data (``S`` = crop size, ``K``/``E`` =
number of identity/expression parameters) and must agree across fields.
Adding a field is one line in :data:`FIELDS`.

Coordinate conventions (docs/shards.md): 0-based pixels, the top-left pixel
centre is ``(0, 0)``, x to the right, y down.  "Crop pixels" are pixels of the
``S x S`` crop; ``crop_affine`` maps source-image pixels to crop pixels.

Storage kinds: one codec each (:mod:`dhm_data.shards.codecs`: ``raw``,
``u8q-lz4``, ``u8q-raw``, ``small``, ``text``), which the writer, the reader
and the verifier all use.  :data:`STORAGE_CHOICES` is the one list of the
storage a build may choose for a field instead of its default (the
``[shards] dhm_storage`` option and ``dhm-data build --dhm-storage`` read
:data:`DHM_STORAGE_CHOICES` from here).  The format is described in
docs/shards.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dhm_data.shards.codecs import (  # noqa: F401  (re-exported: the schema owns the codecs)
    BLOSC_LZ4,
    CODECS,
    QUANT_LEVELS,
    QUANT_MAX_ERROR,
    RAW,
    SMALL,
    TEXT,
    U8Q_LZ4,
    U8Q_RAW,
    Codec,
    dequantise,
    quantise,
)

#: Bumped whenever a field is added, removed or changes meaning/storage.
#: 2: the sha256 of the pixel fields covers their CRC32 column (``sha256_of``).
SCHEMA_VERSION = 2
#: Versions this code reads and verifies (a v1 shard's digests cover bytes).
READABLE_SCHEMA_VERSIONS = (1, 2)

STORAGE_KINDS = tuple(CODECS)
#: Storage a writer may choose instead of a field's default storage kind
#: (``write_shard(storage=...)``, ``ShardWriter(storage=...)``).
ALTERNATIVE_STORAGE = {U8Q_LZ4: (U8Q_LZ4, U8Q_RAW)}


@dataclass(frozen=True)
class Field:
    """One per-sample field.

    ``shape``: per-sample shape, ints or symbolic names (``"S"``, ``"K"``, ``"E"``)
    resolved from the data.  ``dtype``: numpy dtype of the values handed to the
    writer and returned by the reader (``"str"`` for text).  ``storage``: one of
    :data:`STORAGE_KINDS`.
    """

    name: str
    shape: tuple
    dtype: str
    storage: str
    description: str

    @property
    def codec(self) -> Codec:
        """The codec of the field's default storage kind."""
        return CODECS[self.storage]

    @property
    def stored_dtype(self) -> np.dtype | None:
        """dtype of the HDF5 dataset (None for text)."""
        return self.codec.stored_dtype(self)

    @property
    def is_text(self) -> bool:
        return self.storage == TEXT

    @property
    def digest_over_crc(self) -> bool:
        """True for the per-sample pixel fields (``raw`` / ``u8q-*``): the
        field's sha256 is taken over its per-sample CRC32 column, not over its
        bytes again (schema v2)."""
        return self.codec.per_sample

    @property
    def quantised(self) -> bool:
        return self.codec.quantised


FIELDS: tuple[Field, ...] = (
    Field("image", ("S", "S", 3), "uint8", RAW, "RGB crop, uint8, rows = y, cols = x (crop pixels)"),
    Field("dhm", ("S", "S", 3), "float32", U8Q_LZ4,
          "3D Diffusion Heat Map, channels x, y, z in [0, 1]: the per-sample min-max-normalised coordinate of the "
          "winning landmark times its Gaussian weight (dhm_data.prepare.dhm); stored as round(255 v), error <= 0.5/255"),
    Field("landmarks_2d", (68, 2), "float32", SMALL, "68 iBUG 2D landmarks, x, y in crop pixels (0-based)"),
    Field("landmarks_3d", (68, 3), "float32", SMALL,
          "68 posed 3D landmarks: x, y in crop pixels (0-based), z depth in crop-pixel units"),
    Field("pose_para", (7,), "float32", SMALL,
          "Pose_Para [pitch, yaw, roll (radians), tx, ty, tz, s] in the source image (300W-LP convention)"),
    Field("shape_para", ("K",), "float32", SMALL, "identity parameters of the morphable model"),
    Field("exp_para", ("E",), "float32", SMALL, "expression parameters of the morphable model"),
    Field("crop_affine", (2, 3), "float64", SMALL, "affine map source-image pixels (0-based) -> crop pixels"),
    Field("yaw", (), "float32", SMALL, "signed yaw in degrees"),
    Field("name", (), "str", TEXT, "sample name (e.g. IBUG_image_008_1_0)"),
    Field("subset", (), "str", TEXT, "source subset (e.g. IBUG, AFW, Menpo-3D)"),
    Field("flipped", (), "bool", SMALL, "True for a sample of the dataset's own mirrored copies (300W-LP *_Flip)"),
    Field("label_source", (), "str", TEXT, '"label" (3DMM parameters from the dataset) or "fitted" (fit-bfm)'),
    Field("fit_residual", (), "float32", SMALL, "residual of the 3DMM fit (fit-bfm, its units); NaN where parameters are labels"),
    Field("fit_converged", (), "bool", SMALL, "fit convergence flag (True for labels)"),
)

FIELD_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)

#: Group holding per-sample CRC32 arrays, one ``(N,)`` uint32 dataset per field.
CRC_GROUP = "_crc32"


def field(name: str) -> Field:
    """The schema entry of ``name`` (KeyError listing the known fields)."""
    try:
        return FIELD_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown shard field {name!r}; the schema (v{SCHEMA_VERSION}) has {', '.join(FIELD_NAMES)}") from None


#: Storage kinds a build may choose per field (field -> kinds, the default first).
STORAGE_CHOICES: dict[str, tuple[str, ...]] = {
    f.name: ALTERNATIVE_STORAGE[f.storage] for f in FIELDS if f.storage in ALTERNATIVE_STORAGE}
#: The values of ``[shards] dhm_storage`` / ``--dhm-storage`` (default first).
DHM_STORAGE_CHOICES: tuple[str, ...] = STORAGE_CHOICES["dhm"]
DEFAULT_DHM_STORAGE: str = FIELD_BY_NAME["dhm"].storage


def codec_for(kind: str) -> Codec:
    """The codec of storage kind ``kind`` (KeyError naming the known kinds)."""
    try:
        return CODECS[kind]
    except KeyError:
        raise KeyError(f"unknown storage kind {kind!r}; known: {', '.join(CODECS)}") from None

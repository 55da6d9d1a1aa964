"""The one definition of a shard's contents, used by the writer and the reader.

A shard is one HDF5 file holding ``N`` samples.  Every field below is one HDF5
dataset whose first axis is the sample; the per-sample shape may use symbolic
dimensions that are taken from the data (``S`` = crop size, ``K``/``E`` =
number of identity/expression parameters) and must agree across fields.
Adding a field is one line in :data:`FIELDS`.

Coordinate conventions (CONVENTIONS.md): 0-based pixels, the top-left pixel
centre is ``(0, 0)``, x to the right, y down.  "Crop pixels" are pixels of the
``S x S`` crop; ``crop_affine`` maps source-image pixels to crop pixels.

Storage kinds (chosen by ``benchmarks/storage.py``; figures in the README):

``raw``
    contiguous, unfiltered dataset; the reader maps it with ``np.memmap`` at
    ``dataset.id.get_offset()`` (natural photos compress only 1.04-1.19x, a
    filter costs read speed for almost no space).
``u8q-lz4``
    values in [0, 1] quantised to ``uint8 = round(255 x)`` (absolute error at
    most ``0.5/255 = 0.00196``), one chunk per sample, Blosc-LZ4 (hdf5plugin),
    no shuffle.  The reader returns float32 ``u/255`` or the raw uint8.
``u8q-raw``
    the same quantisation, contiguous and unfiltered (memory-mapped by the
    reader): 16x the bytes of ``u8q-lz4`` for about 2x the loader speed; a
    build option, not the default.
``small``
    contiguous, unfiltered, small per-sample arrays; loaded whole per process.
``text``
    variable-length UTF-8 strings; loaded whole per process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Bumped whenever a field is added, removed or changes meaning/storage.
#: 2: the sha256 of the pixel fields covers their CRC32 column (``sha256_of``).
SCHEMA_VERSION = 2
#: Versions this code reads and verifies (a v1 shard's digests cover bytes).
READABLE_SCHEMA_VERSIONS = (1, 2)

RAW = "raw"
U8Q_LZ4 = "u8q-lz4"
U8Q_RAW = "u8q-raw"
SMALL = "small"
TEXT = "text"
STORAGE_KINDS = (RAW, U8Q_LZ4, U8Q_RAW, SMALL, TEXT)
#: Storage a writer may choose instead of a field's default (``write_shard(storage=...)``).
ALTERNATIVE_STORAGE = {U8Q_LZ4: (U8Q_LZ4, U8Q_RAW)}

#: Quantisation step of ``u8q-*`` storage: stored = round(value / QUANT_STEP).
QUANT_LEVELS = 255
#: Largest absolute error of a dequantised ``u8q-*`` value in [0, 1].
QUANT_MAX_ERROR = 0.5 / QUANT_LEVELS


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
    def stored_dtype(self) -> np.dtype | None:
        """dtype of the HDF5 dataset (None for text)."""
        if self.storage == TEXT:
            return None
        if self.storage in (U8Q_LZ4, U8Q_RAW):
            return np.dtype(np.uint8)
        return np.dtype(self.dtype)

    @property
    def is_text(self) -> bool:
        return self.storage == TEXT

    @property
    def digest_over_crc(self) -> bool:
        """True for the per-sample pixel fields (``raw`` / ``u8q-*``): the
        field's sha256 is taken over its per-sample CRC32 column, not over its
        bytes again (see :mod:`dhm_data.shards.shards`)."""
        return self.storage in (RAW, U8Q_LZ4, U8Q_RAW)

    @property
    def quantised(self) -> bool:
        return self.storage in (U8Q_LZ4, U8Q_RAW)


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

#: Blosc-LZ4 filter settings of ``u8q-lz4`` (see benchmarks/storage.py).
BLOSC_LZ4 = {"cname": "lz4", "clevel": 5, "shuffle": 0}

#: Group holding per-sample CRC32 arrays, one ``(N,)`` uint32 dataset per field.
CRC_GROUP = "_crc32"


def field(name: str) -> Field:
    """The schema entry of ``name`` (KeyError listing the known fields)."""
    try:
        return FIELD_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown shard field {name!r}; the schema (v{SCHEMA_VERSION}) has {', '.join(FIELD_NAMES)}") from None


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

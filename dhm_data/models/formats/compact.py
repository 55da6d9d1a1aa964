"""The package's own compact model file: one ``.npz`` holding every
:class:`~dhm_data.models.morphable.MorphableModel` field.

What a build caches (``model.landmark_model()``, 68 rows, a few hundred kB)
so that worker processes never load a 200 MB Basel Face Model; it also holds
a full model losslessly (float64, triangles, contour candidates).

Layout (``numpy.savez``, uncompressed, no pickled objects):

``dhm_compact_format``   0-d str, :data:`FORMAT_MARKER` (what ``detect`` checks)
``name``, ``units``, ``source``  0-d str
``mean``                 ``(V, 3)`` float64, model units
``identity_basis``       ``(V, 3, K)`` float64
``expression_basis``     ``(V, 3, E)`` float64
``identity_std``         ``(K,)`` float64
``expression_std``       ``(E,)`` float64
``landmark_indices``     ``(68,)`` int64, -1 = unmapped
``triangles``            ``(T, 3)`` int64, 0-based; absent when the model has none
``contour_flat``, ``contour_offsets``  the 17 contour-candidate arrays
                         concatenated, with ``(18,)`` offsets; absent when none
``metadata_json``        0-d str, ``metadata`` as JSON (numpy arrays come back
                         as lists, tuples as lists)

NaN rows (unmapped landmarks of a landmark model) are stored as NaN.  The file
is written to a temporary name in the destination folder and renamed into
place, so a reader never sees a half-written model.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from dhm_data import atomic
from dhm_data.errors import ModelFileError
from dhm_data.models.formats import ModelFormat, the_one_file
from dhm_data.models.morphable import MorphableModel

#: Value of the ``dhm_compact_format`` entry; bump the trailing number on an
#: incompatible layout change (load refuses versions it does not know).
FORMAT_MARKER = "dhm-data compact morphable model v1"
MARKER_KEY = "dhm_compact_format"
#: Conventional suffix (any name ending in ``.npz`` is accepted).
SUFFIX = ".npz"

_ARRAYS = ("mean", "identity_basis", "expression_basis", "identity_std", "expression_std", "landmark_indices")


def save_compact(model: MorphableModel, path) -> Path:
    """Write ``model`` to ``path`` (exactly that name) atomically; returns the path."""
    path = Path(path)
    arrays = {
        MARKER_KEY: np.array(FORMAT_MARKER),
        "name": np.array(str(model.name)),
        "units": np.array(str(model.units)),
        "source": np.array(str(model.source)),
        "mean": np.asarray(model.mean, np.float64),
        "identity_basis": np.asarray(model.identity_basis, np.float64),
        "expression_basis": np.asarray(model.expression_basis, np.float64),
        "identity_std": np.asarray(model.identity_std, np.float64),
        "expression_std": np.asarray(model.expression_std, np.float64),
        "landmark_indices": np.asarray(model.landmark_indices, np.int64),
        "metadata_json": np.array(json.dumps(model.metadata, sort_keys=True, default=_jsonable)),
    }
    if model.triangles is not None:
        arrays["triangles"] = np.asarray(model.triangles, np.int64).reshape(-1, 3)
    if model.contour_candidates is not None:
        lines = [np.asarray(c, np.int64).ravel() for c in model.contour_candidates]
        arrays["contour_flat"] = np.concatenate(lines) if lines else np.zeros(0, np.int64)
        arrays["contour_offsets"] = np.concatenate([[0], np.cumsum([len(c) for c in lines])]).astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic.write_bytes(path, buf.getvalue())
    return path


def detect(path: Path) -> bool:
    path = Path(path)
    if path.is_file():
        return _is_compact(path)
    if path.is_dir():
        return bool(_candidates(path))
    return False


def load(path: Path) -> MorphableModel:
    path = Path(path)
    if path.is_dir():
        path = the_one_file(path, _candidates(path), "compact model file", f"*.npz with {MARKER_KEY!r}")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ModelFileError(f"{path}: cannot read as a compact model .npz ({type(e).__name__}: {e})") from e
    with z:
        files = set(z.files)
        marker = str(z[MARKER_KEY]) if MARKER_KEY in files else None
        if marker != FORMAT_MARKER:
            raise ModelFileError(
                f"{path}: key {MARKER_KEY!r} is {marker!r}, expected {FORMAT_MARKER!r} "
                f"(not a dhm-data compact model, or a version this dhm-data does not know)"
            )
        required = ("name", "units", "source", "metadata_json") + _ARRAYS
        missing = [k for k in required if k not in files]
        if missing:
            raise ModelFileError(f"{path}: key(s) {', '.join(map(repr, missing))} missing from compact model")
        d = {k: z[k] for k in files}
    mean = _float(d, "mean", path, 2)
    V = mean.shape[0]
    idb = _float(d, "identity_basis", path, 3)
    exb = _float(d, "expression_basis", path, 3)
    ids = _float(d, "identity_std", path, 1)
    exs = _float(d, "expression_std", path, 1)
    _expect(path, "mean", mean.shape, (V, 3))
    _expect(path, "identity_basis", idb.shape, (V, 3, idb.shape[2]))
    _expect(path, "expression_basis", exb.shape, (V, 3, exb.shape[2]))
    _expect(path, "identity_std", ids.shape, (idb.shape[2],))
    _expect(path, "expression_std", exs.shape, (exb.shape[2],))
    li = np.asarray(d["landmark_indices"]).astype(np.int64)
    _expect(path, "landmark_indices", li.shape, (68,))
    tri = None
    if "triangles" in d:
        tri = np.asarray(d["triangles"]).astype(np.int64)
        if tri.ndim != 2 or tri.shape[1] != 3:
            raise ModelFileError(f"{path}: key 'triangles' has shape {tri.shape}, expected (T, 3)")
    contours = None
    if "contour_flat" in d or "contour_offsets" in d:
        if "contour_flat" not in d or "contour_offsets" not in d:
            raise ModelFileError(f"{path}: contour candidates need both 'contour_flat' and 'contour_offsets'")
        flat = np.asarray(d["contour_flat"]).astype(np.int64)
        off = np.asarray(d["contour_offsets"]).astype(np.int64)
        if off.shape != (18,) or off[0] != 0 or off[-1] != flat.size or np.any(np.diff(off) < 0):
            raise ModelFileError(
                f"{path}: key 'contour_offsets' has shape {off.shape} / values inconsistent with "
                f"'contour_flat' of {flat.size} entries, expected 18 non-decreasing offsets from 0 to {flat.size}"
            )
        contours = tuple(flat[off[i] : off[i + 1]].copy() for i in range(17))
    try:
        metadata = json.loads(str(d["metadata_json"]))
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{path}: key 'metadata_json' is not valid JSON ({e})") from e
    try:
        return MorphableModel(
            name=str(d["name"]),
            mean=mean,
            identity_basis=idb,
            expression_basis=exb,
            identity_std=ids,
            expression_std=exs,
            landmark_indices=li,
            triangles=tri,
            contour_candidates=contours,
            units=str(d["units"]),
            source=str(d["source"]),
            metadata=metadata,
        )
    except ValueError as e:
        raise ModelFileError(f"{path}: inconsistent compact model ({e})") from e


# ---------------------------------------------------------------- helpers
def _is_compact(path: Path) -> bool:
    """True when ``path`` is a zip (.npz) holding the format marker entry."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return f"{MARKER_KEY}.npy" in zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _candidates(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.npz") if p.is_file() and _is_compact(p))


def _float(d, key, path, ndim):
    a = np.asarray(d[key])
    if a.ndim != ndim:
        raise ModelFileError(f"{path}: key {key!r} has shape {a.shape}, expected {ndim} dimensions")
    if not np.issubdtype(a.dtype, np.number):
        raise ModelFileError(f"{path}: key {key!r} has dtype {a.dtype}, expected numbers")
    return a.astype(np.float64)


def _expect(path, key, got, want):
    if tuple(got) != tuple(want):
        raise ModelFileError(f"{path}: key {key!r} has shape {tuple(got)}, expected {tuple(want)}")


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, tuple, set)):
        return str(o) if isinstance(o, Path) else list(o)
    raise ModelFileError(f"model metadata value of type {type(o).__name__} cannot be stored in a compact model")


FORMAT = ModelFormat(
    name="compact",
    description="dhm-data's own compact model (.npz with a format marker; what a build caches)",
    detect=detect,
    load=load,
)

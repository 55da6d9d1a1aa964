"""Basel Face Model 2009 + 3DDFA's expression model, trimmed as 300W-LP uses it.

The user points ``--bfm`` at a folder (or at ``01_MorphableModel.mat`` in it)
holding:

``01_MorphableModel.mat`` (BFM 2009, from the Basel download)
    ``shapeMU`` ``(3 * 53490, 1)`` mean, ``shapePC`` ``(3 * 53490, 199)``
    unit-norm principal components, ``shapeEV`` ``(199, 1)`` standard
    deviations; vertices interleaved x, y, z; micrometres.
``model_info.mat`` (3DDFA's "Face Profiling" / HPEN code, the file face3d's
    ``generate.m`` reads)
    ``trimIndex`` ``(53215, 1)`` 1-based vertex indices into the 53,490
    vertices (the trim 300W-LP / AFLW2000-3D use), ``keypoints`` ``(1, 68)``
    1-based indices into the *trimmed* vertices, ``tri`` ``(3, T)`` 1-based
    triangles of the trimmed mesh.
``Model_Expression.mat`` (3DDFA)
    ``mu_exp`` ``(3 * 53215, 1)`` expression mean, ``w_exp``
    ``(3 * 53215, 29)`` expression basis, ``sigma_exp`` ``(29, 1)``.

Instead of the first two, 3DDFA's already trimmed ``Model_Shape.mat``
(``mu_shape``, ``w``, ``sigma``, ``keypoints``, ``tri``, same conventions) is
accepted.  Optional: ``Modelplus_parallel.mat`` (3DDFA) whose ``parallel``
cell array of 17 1-based vertex lists becomes ``contour_candidates``.

The model is ``S = shapeMU[trim] + mu_exp + shapePC[trim] @ Shape_Para +
w_exp @ Exp_Para`` (docs/conventions.md section 4): the mean includes the
expression mean, coefficients are 300W-LP's ``Shape_Para`` / ``Exp_Para``
directly, ``identity_std = shapeEV`` and ``expression_std = sigma_exp`` (as
face3d's fitting uses them).  Vertex and sample counts are checked against
each other, not hard-coded, so scaled-down files in the same layout load too.

The ``.mat`` helpers here (v5 through scipy, v7.3 through h5py) are shared by
the face3d loader.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from dhm_data.errors import ModelFileError
from dhm_data.models.formats import ModelFormat
from dhm_data.models.morphable import N_LANDMARKS, MorphableModel

MORPHABLE_MODEL = "01_MorphableModel.mat"
MODEL_INFO = "model_info.mat"
MODEL_SHAPE = "Model_Shape.mat"
EXPRESSION = "Model_Expression.mat"
PARALLEL = "Modelplus_parallel.mat"

#: Sizes of the real files (documentation and messages; not enforced).
FULL_VERTICES = 53490
TRIMMED_VERTICES = 53215


# ============================================================ .mat helpers
def read_mat(path: Path, names) -> dict:
    """The variables ``names`` of a MATLAB file (v5 via scipy, v7.3 via h5py)
    that are present, as numpy arrays; structs become dicts, cells object
    arrays.  v7.3 arrays are transposed back to MATLAB's shape."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: file is missing")
    import scipy.io  # deferred: only .mat model files need it (~0.1 s of every command's start-up otherwise)

    try:
        m = scipy.io.loadmat(path, variable_names=list(names))
        return {k: _from_scipy(v) for k, v in m.items() if not k.startswith("__")}
    except NotImplementedError:
        return _read_mat73(path, names)
    except Exception as e:  # scipy raises several types on corrupt files
        raise ModelFileError(f"{path}: cannot read as a MATLAB .mat file ({type(e).__name__}: {e})") from e


def _from_scipy(v):
    if isinstance(v, np.ndarray) and v.dtype.names is not None:  # struct
        if v.size != 1:
            return v
        s = v.reshape(-1)[0]
        return {n: _from_scipy(s[n]) for n in v.dtype.names}
    return v


def _read_mat73(path: Path, names) -> dict:
    out = {}
    try:
        with h5py.File(path, "r") as f:
            for n in names:
                if n in f:
                    out[n] = _h5_value(f, f[n])
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read as a MATLAB .mat file ({e})") from e
    return out


def _h5_value(f, obj):
    if isinstance(obj, h5py.Group):
        return {k: _h5_value(f, obj[k]) for k in obj}
    a = obj[()]
    if obj.dtype == h5py.ref_dtype:  # a cell array: references to datasets
        cells = np.empty(a.shape, dtype=object)
        for i, r in np.ndenumerate(a):
            cells[i] = _h5_value(f, f[r])
        return cells.T
    return np.asarray(a).T


def present_keys(mat: dict) -> str:
    return ", ".join(sorted(mat)) or "none"


def get(mat: dict, path: Path, key: str):
    if key not in mat:
        raise ModelFileError(f"{path}: key {key!r} is missing (present: {present_keys(mat)})")
    return mat[key]


def matrix(mat: dict, path: Path, key: str, rows: int | None, cols: int | None, *, vector=False) -> np.ndarray:
    """``mat[key]`` as a float64 ``(rows, cols)`` matrix (``None`` = any);
    with ``vector`` a ``(n, 1)``, ``(1, n)`` or ``(n,)`` array becomes ``(n,)``."""
    a = np.asarray(get(mat, path, key))
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ModelFileError(f"{path}: key {key!r} has dtype {a.dtype}, expected a numeric array")
    if vector:
        if a.ndim > 2 or (a.ndim == 2 and 1 not in a.shape):
            raise ModelFileError(f"{path}: key {key!r} has shape {a.shape}, expected a vector ({rows}, 1)")
        a = a.reshape(-1)
        if rows is not None and a.size != rows:
            raise ModelFileError(f"{path}: key {key!r} has {a.size} entries, expected {rows} (shape ({rows}, 1))")
        return a.astype(np.float64, copy=False)
    want = (rows if rows is not None else "any", cols if cols is not None else "any")
    if a.ndim != 2 or (rows is not None and a.shape[0] != rows) or (cols is not None and a.shape[1] != cols):
        raise ModelFileError(f"{path}: key {key!r} has shape {a.shape}, expected ({want[0]}, {want[1]})")
    return a.astype(np.float64, copy=False)


def one_based_indices(mat: dict, path: Path, key: str, n: int | None, upper: int) -> np.ndarray:
    """A 1-based MATLAB index vector as 0-based int64, each in ``[0, upper)``."""
    a = matrix(mat, path, key, n, None, vector=True)
    return _check_one_based(a, path, key, upper)


def _check_one_based(a, path, key, upper):
    if a.size and (np.any(a != np.round(a)) or a.min() < 1 or a.max() > upper):
        raise ModelFileError(
            f"{path}: key {key!r} holds values in [{a.min():g}, {a.max():g}], expected 1-based integer "
            f"indices in [1, {upper}]"
        )
    return a.astype(np.int64) - 1


def triangles(mat: dict, path: Path, key: str, n_vertices: int, *, one_based=True) -> np.ndarray:
    """A ``(3, T)`` (MATLAB layout) or ``(T, 3)`` triangle list as 0-based ``(T, 3)`` int64."""
    a = np.asarray(get(mat, path, key))
    if a.ndim != 2 or 3 not in a.shape or not np.issubdtype(a.dtype, np.number):
        raise ModelFileError(f"{path}: key {key!r} has shape {a.shape} dtype {a.dtype}, expected (3, T) or (T, 3) indices")
    t = a if a.shape[1] == 3 and a.shape[0] != 3 else a.T
    t = np.asarray(t, np.float64)
    lo, hi = (1, n_vertices) if one_based else (0, n_vertices - 1)
    if t.size and (np.any(t != np.round(t)) or t.min() < lo or t.max() > hi):
        base = "1-based" if one_based else "0-based"
        raise ModelFileError(
            f"{path}: key {key!r} holds values in [{t.min():g}, {t.max():g}], expected {base} vertex indices "
            f"in [{lo}, {hi}]"
        )
    return np.ascontiguousarray(t.astype(np.int64) - (1 if one_based else 0))


def index_cells(value, path: Path, key: str, n_lines: int, upper: int) -> tuple:
    """A MATLAB cell array of ``n_lines`` 1-based index vectors as a tuple of 0-based int64 arrays."""
    cells = np.asarray(value, dtype=object).reshape(-1) if np.asarray(value).dtype == object else None
    if cells is None or cells.size != n_lines:
        shape = np.asarray(value).shape
        raise ModelFileError(f"{path}: key {key!r} has shape {shape}, expected a cell array of {n_lines} index lists")
    out = []
    for i, c in enumerate(cells):
        a = np.asarray(c, dtype=np.float64).reshape(-1)
        out.append(_check_one_based(a, path, f"{key}{{{i + 1}}}", upper))
    return tuple(out)


def interleaved(a: np.ndarray, path: Path, key: str, n_vertices: int) -> np.ndarray:
    """``(3V, K)`` interleaved x, y, z rows as ``(V, 3, K)``."""
    if a.shape[0] != 3 * n_vertices:
        raise ModelFileError(f"{path}: key {key!r} has {a.shape[0]} rows, expected 3 x {n_vertices} = {3 * n_vertices}")
    return a.reshape(n_vertices, 3, -1)


# ================================================================ format
def _files(path: Path):
    folder = path if path.is_dir() else path.parent
    return folder


def detect(path: Path) -> bool:
    path = Path(path)
    if path.is_file():
        return path.name in (MORPHABLE_MODEL, MODEL_SHAPE)
    return path.is_dir() and ((path / MORPHABLE_MODEL).is_file() or (path / MODEL_SHAPE).is_file())


def load(path: Path) -> MorphableModel:
    path = Path(path)
    folder = _files(path)
    exp_path = folder / EXPRESSION
    use_shape = (path.is_file() and path.name == MODEL_SHAPE) or (
        path.is_dir() and not (folder / MORPHABLE_MODEL).is_file() and (folder / MODEL_SHAPE).is_file()
    )
    if not exp_path.is_file():
        raise ModelFileError(
            f"{folder}: {EXPRESSION} (3DDFA's expression model: mu_exp, w_exp, sigma_exp) is missing; "
            f"put it beside {MODEL_SHAPE if use_shape else MORPHABLE_MODEL}"
        )
    if use_shape:
        shp = folder / MODEL_SHAPE
        m = read_mat(shp, ["mu_shape", "w", "sigma", "keypoints", "tri"])
        w = matrix(m, shp, "w", None, None)
        if w.shape[0] % 3:
            raise ModelFileError(f"{shp}: key 'w' has {w.shape[0]} rows, expected a multiple of 3 (x, y, z per vertex)")
        V = w.shape[0] // 3
        K = w.shape[1]
        mu = matrix(m, shp, "mu_shape", 3 * V, None, vector=True)
        ev = matrix(m, shp, "sigma", K, None, vector=True)
        kpt = one_based_indices(m, shp, "keypoints", N_LANDMARKS, V)
        tri = triangles(m, shp, "tri", V)
        id_basis = interleaved(w, shp, "w", V)
        mean_id = mu.reshape(V, 3)
        sources = [shp]
    else:
        bfm = folder / MORPHABLE_MODEL
        info = folder / MODEL_INFO
        if not info.is_file():
            raise ModelFileError(
                f"{folder}: {MODEL_INFO} (3DDFA's trim list 'trimIndex', 68 'keypoints' and trimmed 'tri') is "
                f"missing; put it beside {MORPHABLE_MODEL}"
            )
        mi = read_mat(info, ["trimIndex", "keypoints", "tri"])
        trim_raw = matrix(mi, info, "trimIndex", None, None, vector=True)
        V = trim_raw.size
        b = read_mat(bfm, ["shapeMU", "shapePC", "shapeEV"])
        pc = np.asarray(get(b, bfm, "shapePC"))
        if pc.ndim != 2 or pc.shape[0] % 3:
            raise ModelFileError(
                f"{bfm}: key 'shapePC' has shape {pc.shape}, expected (3 x {FULL_VERTICES}, 199) interleaved rows"
            )
        v_full = pc.shape[0] // 3
        K = pc.shape[1]
        trim = _check_one_based(trim_raw, info, "trimIndex", v_full)
        if len(np.unique(trim)) != V:
            raise ModelFileError(f"{info}: key 'trimIndex' holds repeated vertex indices")
        mu_full = matrix(b, bfm, "shapeMU", 3 * v_full, None, vector=True)
        ev = matrix(b, bfm, "shapeEV", K, None, vector=True)
        id_basis = np.asarray(pc.reshape(v_full, 3, K)[trim], np.float64)
        mean_id = mu_full.reshape(v_full, 3)[trim]
        kpt = one_based_indices(mi, info, "keypoints", N_LANDMARKS, V)
        tri = triangles(mi, info, "tri", V)
        sources = [bfm, info]
    e = read_mat(exp_path, ["mu_exp", "w_exp", "sigma_exp"])
    w_exp = matrix(e, exp_path, "w_exp", 3 * V, None)
    E = w_exp.shape[1]
    mu_exp = matrix(e, exp_path, "mu_exp", 3 * V, None, vector=True)
    sigma_exp = matrix(e, exp_path, "sigma_exp", E, None, vector=True)
    contours = None
    par = folder / PARALLEL
    if par.is_file():
        pm = read_mat(par, ["parallel"])
        contours = index_cells(get(pm, par, "parallel"), par, "parallel", 17, V)
        sources.append(par)
    sources.insert(1 if use_shape else 2, exp_path)
    _check_finite(mean_id, sources[0], "mean")
    return MorphableModel(
        name=f"BFM 2009 + 3DDFA expressions ({V} vertices, {K} identity, {E} expression)",
        mean=mean_id + mu_exp.reshape(V, 3),
        identity_basis=id_basis,
        expression_basis=w_exp.reshape(V, 3, E),
        identity_std=ev,
        expression_std=sigma_exp,
        landmark_indices=kpt,
        triangles=tri,
        contour_candidates=contours,
        units="micrometre",
        source=";".join(str(p) for p in sources),
        metadata={"format": "bfm2009", "family": "bfm2009", "axes": "BFM model frame: x right (subject's left), y up, z towards the viewer"},
    )


def _check_finite(a, path, what):
    if not np.all(np.isfinite(a)):
        raise ModelFileError(f"{path}: {what} holds {int(np.sum(~np.isfinite(a)))} NaN/inf values")


FORMAT = ModelFormat(
    name="bfm2009",
    description=(
        f"folder with {MORPHABLE_MODEL} + {MODEL_INFO} (or 3DDFA's {MODEL_SHAPE}) + {EXPRESSION} "
        f"[+ {PARALLEL}]"
    ),
    detect=detect,
    load=load,
)

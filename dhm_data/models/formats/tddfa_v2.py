"""3DDFA_V2's ``bfm_noneck_v3.pkl`` (``configs/`` of cleardusk/3DDFA_V2).

A pickled dict, ``N`` vertices (38,365 in the real no-neck file) interleaved
x, y, z, micrometres (the units of 300W-LP's BFM):

``u`` ``(3N, 1)`` float32 mean (expression mean included),
``w_shp`` ``(3N, 40)`` identity and ``w_exp`` ``(3N, 10)`` expression bases
(the leading BFM 2009 / 3DDFA components, same scale as 300W-LP's
``Shape_Para`` / ``Exp_Para``), ``keypoints`` ``(204,)`` 0-based indices into
the flattened ``3N`` vector, ``[3k, 3k+1, 3k+2]`` for landmark vertex ``k``,
and ``tri`` ``(3, T)`` 0-based.  3DDFA_V2 replaces ``tri`` with
``configs/tri.pkl`` ("re-built for bfm_noneck_v3"): when a ``tri.pkl`` sits
beside the model file it is used the same way.

No standard deviations ship with it: like the 68-row text subset, the prior is
:data:`~dhm_data.models.formats.bfm68_text.ASSUMED_IDENTITY_STD` /
:data:`~dhm_data.models.formats.bfm68_text.ASSUMED_EXPRESSION_STD`.

The pickle is read with an unpickler that only admits numpy arrays (no
arbitrary code runs from a model file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dhm_data.errors import ModelFileError
from dhm_data.formats.pickles import read_numpy_pickle
from dhm_data.models.formats import ModelFormat
from dhm_data.models.formats.bfm68_text import ASSUMED_EXPRESSION_STD, ASSUMED_IDENTITY_STD
from dhm_data.models.morphable import N_LANDMARKS, MorphableModel

FILES = ("bfm_noneck_v3.pkl", "bfm_noneck.pkl")
TRI_FILE = "tri.pkl"


def read_pickle(path: Path):
    """The model pickle read by :func:`dhm_data.formats.pickles.read_numpy_pickle` (numpy arrays only)."""
    return read_numpy_pickle(path, ModelFileError)


def _model_file(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix.lower() == ".pkl" and path.name != TRI_FILE else None
    if path.is_dir():
        for name in FILES:
            if (path / name).is_file():
                return path / name
    return None


def detect(path: Path) -> bool:
    return _model_file(Path(path)) is not None


def _array(d: dict, path: Path, key: str) -> np.ndarray:
    if key not in d:
        present = ", ".join(sorted(map(str, d))) or "none"
        raise ModelFileError(f"{path}: key {key!r} is missing (present: {present})")
    a = np.asarray(d[key])
    if not np.issubdtype(a.dtype, np.number):
        raise ModelFileError(f"{path}: key {key!r} has dtype {a.dtype}, expected a numeric array")
    return a


def load(path: Path) -> MorphableModel:
    path = Path(path)
    mf = _model_file(path)
    if mf is None:
        raise ModelFileError(f"{path}: no {' or '.join(FILES)} here")
    d = read_pickle(mf)
    if not isinstance(d, dict):
        raise ModelFileError(f"{mf}: holds a {type(d).__name__}, expected a dict with u, w_shp, w_exp, keypoints, tri")
    u = _array(d, mf, "u")
    if u.ndim > 2 or (u.ndim == 2 and u.shape[1] != 1) or u.size % 3:
        raise ModelFileError(f"{mf}: key 'u' has shape {u.shape}, expected (3N, 1)")
    V = u.size // 3
    w_shp = _array(d, mf, "w_shp")
    w_exp = _array(d, mf, "w_exp")
    for key, w in (("w_shp", w_shp), ("w_exp", w_exp)):
        if w.ndim != 2 or w.shape[0] != 3 * V:
            raise ModelFileError(f"{mf}: key {key!r} has shape {w.shape}, expected ({3 * V}, components) to match 'u'")
    kp = _array(d, mf, "keypoints").reshape(-1)
    if kp.shape != (3 * N_LANDMARKS,):
        raise ModelFileError(f"{mf}: key 'keypoints' has shape {np.shape(d['keypoints'])}, expected ({3 * N_LANDMARKS},)")
    kp = kp.astype(np.int64)
    vert = kp[0::3] // 3
    expected = np.stack([3 * vert, 3 * vert + 1, 3 * vert + 2], axis=1).reshape(-1)
    if np.any(kp != expected) or np.any(kp[0::3] % 3 != 0) or kp.min() < 0 or kp.max() >= 3 * V:
        raise ModelFileError(
            f"{mf}: key 'keypoints' is not the flattened [3k, 3k+1, 3k+2] 0-based layout into the {3 * V}-vector"
        )
    tri_src = mf.parent / TRI_FILE
    if tri_src.is_file():
        tri_raw = read_pickle(tri_src)
        tri_key = TRI_FILE
    else:
        tri_raw = d.get("tri")
        tri_src, tri_key = mf, "tri"
    tri = None
    if tri_raw is not None:
        t = np.asarray(tri_raw)
        if t.ndim != 2 or 3 not in t.shape or not np.issubdtype(t.dtype, np.number):
            raise ModelFileError(f"{tri_src}: {tri_key} has shape {t.shape}, expected (3, T) 0-based indices")
        t = t.T if t.shape[0] == 3 else t
        t = np.ascontiguousarray(t, np.int64)
        if t.size and (t.min() < 0 or t.max() >= V):
            raise ModelFileError(
                f"{tri_src}: {tri_key} holds indices in [{t.min()}, {t.max()}], expected 0-based in [0, {V - 1}]"
            )
        tri = t
    K, E = w_shp.shape[1], w_exp.shape[1]
    sources = [str(mf)] + ([str(tri_src)] if tri_src != mf and tri is not None else [])
    return MorphableModel(
        name=f"BFM 2009 + 3DDFA expressions, 3DDFA_V2 {mf.name} ({V} vertices, {K} identity, {E} expression)",
        mean=np.asarray(u, np.float64).reshape(V, 3),
        identity_basis=np.asarray(w_shp, np.float64).reshape(V, 3, K),
        expression_basis=np.asarray(w_exp, np.float64).reshape(V, 3, E),
        identity_std=np.full(K, ASSUMED_IDENTITY_STD),
        expression_std=np.full(E, ASSUMED_EXPRESSION_STD),
        landmark_indices=vert,
        triangles=tri,
        units="micrometre",
        source=";".join(sources),
        metadata={"format": "tddfa_v2", "family": "bfm2009", "std": "assumed (the file has none); see model_io.bfm68_text"},
    )


FORMAT = ModelFormat(
    name="tddfa_v2",
    description="3DDFA_V2's bfm_noneck_v3.pkl (pickled dict u, w_shp, w_exp, keypoints, tri) [+ tri.pkl beside it]",
    detect=detect,
    load=load,
)

"""face3d's generated ``BFM.mat`` (``examples/Data/BFM/generate.m`` or
``generate.py`` in yfeng95/face3d, run on the user's BFM 2009 + 3DDFA files).

One MATLAB struct ``model`` (``scipy.io.loadmat(p)['model'][0, 0]``) with
fields, ``N`` = 53,215 trimmed vertices interleaved x, y, z, micrometres:

``shapeMU`` ``(3N, 1)``, ``shapePC`` ``(3N, 199)``, ``shapeEV`` ``(199, 1)``
(standard deviations), ``expMU`` ``(3N, 1)``, ``expPC`` ``(3N, 29)``,
``expEV`` ``(29, 1)``, ``texMU`` / ``texPC`` / ``texEV`` (ignored here),
``tri`` ``(3, T)`` 1-based, ``tri_mouth`` (ignored), ``kpt_ind`` ``(1, 68)``
1-based vertex indices of the 68 landmarks.

As face3d's own loader does, the mean is ``shapeMU + expMU``; coefficients
are 300W-LP's ``Shape_Para`` / ``Exp_Para``; ``identity_std = shapeEV``,
``expression_std = expEV``.  When ``BFM_info.mat`` (written beside it by the
same script) holds ``model_info.parallel`` (17 1-based vertex lists), those
become ``contour_candidates``.

``--bfm`` takes the ``.mat`` file itself (any name, recognised by its
``model`` struct) or a folder holding ``BFM.mat``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dhm_data.errors import ModelFileError
from dhm_data.models.formats import ModelFormat
from dhm_data.models.formats.bfm2009 import (
    get,
    index_cells,
    interleaved,
    matrix,
    one_based_indices,
    read_mat,
    triangles,
)
from dhm_data.models.morphable import N_LANDMARKS, MorphableModel

FILE = "BFM.mat"
INFO = "BFM_info.mat"


def detect(path: Path) -> bool:
    path = Path(path)
    if path.is_dir():
        return (path / FILE).is_file()
    if not path.is_file() or path.suffix.lower() != ".mat":
        return False
    if path.name == FILE:
        return True
    return _has_model_struct(path)


def _has_model_struct(path: Path) -> bool:
    import scipy.io  # deferred: only this format's files need it (~0.1 s of every command's start-up otherwise)

    try:
        return any(name == "model" and cls == "struct" for name, _, cls in scipy.io.whosmat(path))
    except Exception:  # v7.3 / not a .mat: try HDF5
        try:
            import h5py  # only for MATLAB v7.3 files, which are HDF5

            with h5py.File(path, "r") as f:
                return "model" in f and isinstance(f["model"], h5py.Group) and "shapeMU" in f["model"]
        except Exception:
            return False


def load(path: Path) -> MorphableModel:
    path = Path(path)
    if path.is_dir():
        path = path / FILE
    top = read_mat(path, ["model"])
    m = get(top, path, "model")
    if not isinstance(m, dict):
        raise ModelFileError(f"{path}: key 'model' is a {type(m).__name__} of shape {np.shape(m)}, expected a 1x1 struct")
    where = Path(f"{path}:model")
    pc = matrix(m, where, "shapePC", None, None)
    if pc.shape[0] % 3:
        raise ModelFileError(f"{where}: key 'shapePC' has {pc.shape[0]} rows, expected a multiple of 3 (x, y, z per vertex)")
    V, K = pc.shape[0] // 3, pc.shape[1]
    mu = matrix(m, where, "shapeMU", 3 * V, None, vector=True)
    ev = matrix(m, where, "shapeEV", K, None, vector=True)
    exp_pc = matrix(m, where, "expPC", 3 * V, None)
    E = exp_pc.shape[1]
    exp_mu = matrix(m, where, "expMU", 3 * V, None, vector=True)
    exp_ev = matrix(m, where, "expEV", E, None, vector=True)
    kpt = one_based_indices(m, where, "kpt_ind", N_LANDMARKS, V)
    tri = triangles(m, where, "tri", V)
    contours = None
    sources = [str(path)]
    info = path.parent / INFO
    if info.is_file():
        im = read_mat(info, ["model_info"]).get("model_info")
        if isinstance(im, dict) and "parallel" in im:
            contours = index_cells(im["parallel"], Path(f"{info}:model_info"), "parallel", 17, V)
            sources.append(str(info))
        elif im is not None and not isinstance(im, dict):
            raise ModelFileError(f"{info}: key 'model_info' has shape {np.shape(im)}, expected a 1x1 struct")
    return MorphableModel(
        name=f"BFM 2009 + 3DDFA expressions, face3d BFM.mat ({V} vertices, {K} identity, {E} expression)",
        mean=(mu + exp_mu).reshape(V, 3),
        identity_basis=interleaved(pc, where, "shapePC", V),
        expression_basis=interleaved(exp_pc, where, "expPC", V),
        identity_std=ev,
        expression_std=exp_ev,
        landmark_indices=kpt,
        triangles=tri,
        contour_candidates=contours,
        units="micrometre",
        source=";".join(sources),
        metadata={"format": "face3d", "family": "bfm2009"},
    )


FORMAT = ModelFormat(
    name="face3d",
    description=f"face3d's generated {FILE} (struct 'model': shapeMU, shapePC, shapeEV, expMU, expPC, expEV, tri, kpt_ind)",
    detect=detect,
    load=load,
)

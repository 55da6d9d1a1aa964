"""The 68-row BFM subset as text files (3DDFA's benchmark helpers).

A directory holding ``u_base.txt`` (204,) mean, ``w_shp_base.txt`` (204, 40)
identity and ``w_exp_base.txt`` (204, 10) expression rows, interleaved
x, y, z per landmark (row ``3k + c``), micrometres; optionally
``keypoints_sim.npy`` (the flattened full-model indices, informational only).
No standard deviations ship with it; see :data:`ASSUMED_IDENTITY_STD` and
:data:`ASSUMED_EXPRESSION_STD` for the documented prior we assume instead
(used only by fitting's regulariser).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dhm_data.errors import ModelFileError
from dhm_data.models.formats import ModelFormat
from dhm_data.models.morphable import N_LANDMARKS, MorphableModel

FILES = ("u_base.txt", "w_shp_base.txt", "w_exp_base.txt")


def detect(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in FILES)


def _read(path: Path, shape_cols):
    try:
        a = np.loadtxt(path, dtype=np.float64, ndmin=2 if shape_cols else 1)
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}: cannot read as a whitespace-separated number table ({e})") from e
    rows_expected = 3 * N_LANDMARKS
    if a.shape[0] != rows_expected:
        raise ModelFileError(f"{path}: expected {rows_expected} rows (68 landmarks x 3), found shape {a.shape}")
    return a


#: Assumed prior std of each 300W-LP ``Shape_Para`` coefficient for the text
#: subset, which carries no eigenvalues: the order of magnitude of the leading
#: BFM 2009 identity coefficients in 300W-LP labels (a few 1e5).  Flat across
#: components, a deliberate, documented simplification.
ASSUMED_IDENTITY_STD = 3.0e5
#: ``Exp_Para`` is pre-scaled to be of order 1 (docs/conventions.md section 4).
ASSUMED_EXPRESSION_STD = 1.0


def load(path: Path) -> MorphableModel:
    path = Path(path)
    u = _read(path / "u_base.txt", False)
    w_shp = _read(path / "w_shp_base.txt", True)
    w_exp = _read(path / "w_exp_base.txt", True)
    V = N_LANDMARKS
    mean = u.reshape(V, 3)
    id_basis = w_shp.reshape(V, 3, -1)
    exp_basis = w_exp.reshape(V, 3, -1)
    return MorphableModel(
        name="BFM 2009 + 3DDFA expressions [68-row subset]",
        mean=mean,
        identity_basis=id_basis,
        expression_basis=exp_basis,
        identity_std=np.full(id_basis.shape[2], ASSUMED_IDENTITY_STD),
        expression_std=np.full(exp_basis.shape[2], ASSUMED_EXPRESSION_STD),
        landmark_indices=np.arange(V),
        units="micrometre",
        source=str(path),
        metadata={"format": "bfm68-text", "family": "bfm2009"},
    )


FORMAT = ModelFormat(
    name="bfm68-text",
    description="folder with u_base.txt, w_shp_base.txt, w_exp_base.txt (68-row BFM subset)",
    detect=detect,
    load=load,
)

"""Label fields of the datasets' files, checked: the 3DMM parameters of the
300W-LP / AFLW2000-3D ``.mat`` files and the ``.t7`` landmark tensors of
LS3D-W (also AFLW2000-3D's re-annotation).

The byte formats themselves are read by :mod:`dhm_data.formats` (MAT v5,
Torch7); this module knows which variable a dataset keeps where, with which
shape.  A ``.t7`` landmark file holds a Torch7 FloatTensor 68x2 of 0-based
pixel coordinates; anything else -- another tensor type, a table, a wrong
shape, NaN/inf, a damaged file -- is a :class:`DatasetError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dhm_data.errors import DatasetError
from dhm_data.formats.matfile import load_mat
from dhm_data.formats.t7 import read_t7


def read_landmarks_t7(path: Path) -> np.ndarray:
    """``(68, 2)`` float64 landmarks, 0-based pixels, from a ``.t7`` file."""
    try:
        lm = np.asarray(read_t7(path), np.float64)
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"{path}: cannot read as a Torch7 tensor ({type(e).__name__}: {e})") from e
    if lm.shape != (68, 2):
        raise DatasetError(f"{path}: landmark tensor has shape {lm.shape}, expected (68, 2)")
    if not np.all(np.isfinite(lm)):
        raise DatasetError(f"{path}: landmark tensor holds {int(np.sum(~np.isfinite(lm)))} NaN/inf values")
    return lm


def field(mat: dict, path: Path, key: str, shape: tuple, *, finite=True, allow_transposed=False) -> np.ndarray:
    """``mat[key]`` as float64 with exactly ``shape`` (or its transpose when
    ``allow_transposed``); missing key, wrong shape or NaN/inf raise.  ``mat``
    may hold only some of the file's variables (``load_mat(variable_names=...)``):
    the error for a missing key lists every variable the file has."""
    if key not in mat:
        everything = load_mat(path)  # a damaged file raises its own error here, not "key missing"
        present = ", ".join(k for k in everything if not k.startswith("__"))
        raise DatasetError(f"{path}: key {key!r} is missing (present: {present})")
    a = np.asarray(mat[key])
    if a.shape != shape:
        if allow_transposed and a.shape == shape[::-1]:
            a = a.T
        else:
            raise DatasetError(f"{path}: {key!r} has shape {a.shape}, expected {shape}")
    try:
        a = a.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: {key!r} has dtype {a.dtype}, expected numbers") from e
    if finite and not np.all(np.isfinite(a)):
        raise DatasetError(f"{path}: {key!r} holds {int(np.sum(~np.isfinite(a)))} NaN/inf values")
    return a


def labelled_parameters(mat: dict, path: Path):
    """The 3DMM labels of a 300W-LP / AFLW2000-3D ``.mat``: ``Pose_Para`` (7,),
    ``Shape_Para`` (199,) and ``Exp_Para`` (29,), float64, checked."""
    return (field(mat, path, "Pose_Para", (1, 7)).ravel(), field(mat, path, "Shape_Para", (199, 1)).ravel(),
            field(mat, path, "Exp_Para", (29, 1)).ravel())

"""Reading the MATLAB v5 label files of 300W-LP and AFLW2000-3D robustly.

``scipy.io.loadmat`` with ``mat_dtype=True`` undoes MATLAB's compact storage
(an all-zero double array saved as uint8); every field is then checked for
its shape and finiteness, and errors name the file and the key.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from .base import DatasetError, require_file


def load_mat(path: Path) -> dict:
    """All variables of a v5 .mat file as float64-friendly arrays."""
    path = Path(path)
    require_file(path, "label file")
    try:
        return scipy.io.loadmat(path, mat_dtype=True)
    except NotImplementedError as e:  # v7.3 files are HDF5
        raise DatasetError(f"{path}: MATLAB v7.3 (HDF5) .mat files are not the dataset's format; expected v5 ({e})") from e
    except Exception as e:  # scipy raises several types for corrupt files
        raise DatasetError(f"{path}: cannot read as a MATLAB v5 .mat file ({type(e).__name__}: {e})") from e


def field(mat: dict, path: Path, key: str, shape: tuple, *, finite=True, allow_transposed=False) -> np.ndarray:
    """``mat[key]`` as float64 with exactly ``shape`` (or its transpose when
    ``allow_transposed``); missing key, wrong shape or NaN/inf raise."""
    if key not in mat:
        present = ", ".join(k for k in mat if not k.startswith("__"))
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

"""The fit result file: one ``.npz`` per fitted batch (or build shard).

Written atomically (temporary dot-file + ``os.replace``, :mod:`dhm_data.atomic`),
read back with :func:`read_fits`.  NumPy ``.npz`` (a zip of ``.npy`` arrays,
readable from any language with an npy reader; no pickles: strings are fixed
width unicode arrays).  Keys, ``B`` = number of images:

=====================  ============  =============================================
key                    shape, dtype  meaning
=====================  ============  =============================================
``format``             () str        ``"dhm-data-fit/1"``
``names``              (B,) str      sample names (``"0"``, ``"1"``, ... for an array input)
``pose_para``          (B, 7) f8     ``Pose_Para`` [pitch, yaw, roll, tx, ty, tz, s],
                                     radians, 300W-LP convention (:mod:`dhm_data.geometry.camera`);
                                     ``tz = 0`` for 2D-only fits (unobservable)
``shape_para``         (B, K) f8     identity coefficients, the model's units
``exp_para``           (B, E) f8     expression coefficients, the model's units
``residual``           (B,) f8       NME of the fit: mean 2D error / sqrt(w h) of the
                                     observed landmark box
``residual_px``        (B,) f8       mean 2D error in pixels
``iterations``         (B,) i8       iterations used
``converged``          (B,) bool     convergence test passed
``flagged``            (B,) bool     not converged, or ``residual > max_residual``, or
                                     not fitted (too few valid landmarks: NaN parameters)
``n_points``           (B,) i8       valid landmarks used
``landmarks``          (B, 68, 3) f8 fitted landmarks, 0-based image pixels (x, y) and depth
``landmark_vertices``  (B, 68) i8    model vertex per landmark after marching (-1 unmapped)
``image_height``       (B,) f8       image heights used (``ty`` depends on them)
``max_residual``       () f8         the flagging limit
``model``              () str        model name
``config``             () str        JSON of the :class:`~dhm_data.fit.config.FitConfig`
``used_3d``            () bool       3D landmark estimates were used
``jaw``                () str        the jaw mode of the fit (``fixed`` / ``silhouette``;
                                     absent in files written before it was recorded)
``jaw_reason``         () str        why that mode (the option, or the default's reason)
=====================  ============  =============================================

A NaN row of ``pose_para`` means the image was not fitted (flagged).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dhm_data import atomic
from dhm_data.errors import FitFileError

FORMAT = "dhm-data-fit/1"

REQUIRED = ("names", "pose_para", "shape_para", "exp_para", "residual", "converged")

__all__ = ["FORMAT", "FitFileError", "write_fits", "read_fits", "flagged_table"]


def write_fits(path, names, result, image_height=None, model_name: str = "", used_3d: bool = False,
               extra: dict | None = None, jaw_reason: str = "") -> Path:
    """Write a :class:`~dhm_data.fit.result.FitResult` to ``path`` (``.npz``) atomically.

    ``names`` ``(B,)`` sample names (``None``: ``"0".."B-1"``); ``result``
    ``None`` with no names writes a valid empty file (a shard whose samples
    were all rejected).  ``image_height`` scalar or ``(B,)`` pixels (``None``:
    the heights the fit recorded, if any).  ``extra``: more arrays to store
    (e.g. ``input_fingerprint``), names must not clash.  ``jaw_reason``: why
    the fit used its jaw mode (stored beside ``jaw``).  Returns the path.
    """
    path = Path(path)
    if result is None:
        if names is not None and len(names):
            raise FitFileError(f"{path}: {len(names)} names but no fit result")
        arrays = {k: np.zeros((0,) + shp) for k, shp in
                  (("pose_para", (7,)), ("shape_para", (0,)), ("exp_para", (0,)), ("residual", ()), ("residual_px", ()),
                   ("landmarks", (68, 3)))}
        arrays.update(iterations=np.zeros(0, np.int64), converged=np.zeros(0, bool), n_points=np.zeros(0, np.int64),
                      landmark_vertices=np.zeros((0, 68), np.int64))
        B, max_res, config = 0, np.nan, {}
    else:
        B = len(result)
        arrays = dict(result.arrays())
        max_res, config = float(result.max_residual), result.config
    names = np.asarray([str(i) for i in range(B)] if names is None else [str(n) for n in names], dtype=str)
    if names.shape != (B,):
        raise FitFileError(f"{path}: {names.shape[0]} names for {B} fitted images")
    if image_height is None and result is not None and getattr(result, "image_height", None) is not None:
        image_height = result.image_height
    h = np.broadcast_to(np.asarray(np.nan if image_height is None else image_height, np.float64), (B,))
    flagged = np.asarray(result.flagged, bool) if result is not None else np.zeros(0, bool)
    arrays.update(
        format=np.asarray(FORMAT),
        names=names,
        flagged=flagged,
        image_height=np.array(h),
        max_residual=np.asarray(max_res),
        model=np.asarray(model_name),
        config=np.asarray(json.dumps(config, sort_keys=True, default=str)),
        used_3d=np.asarray(bool(used_3d)),
        jaw=np.asarray(str(config.get("jaw", ""))),
        jaw_reason=np.asarray(str(jaw_reason)),
    )
    for k, v in (extra or {}).items():
        if k in arrays:
            raise FitFileError(f"{path}: extra key {k!r} clashes with a standard key")
        arrays[k] = np.asarray(v)
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return path


def read_fits(path) -> dict:
    """Read a fit file written by :func:`write_fits`: ``{key: array}`` with
    the keys of the module table (scalars as 0-d arrays, ``config`` parsed to
    a dict).  Raises :class:`FitFileError` naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FitFileError(f"{path}: no such fit file (run `dhm-data fit-bfm` first)")
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise FitFileError(f"{path}: not a readable .npz fit file ({e})") from e
    fmt = str(d.get("format", ""))
    if fmt != FORMAT:
        raise FitFileError(f"{path}: key 'format' is {fmt!r}, expected {FORMAT!r}")
    for k in REQUIRED:
        if k not in d:
            raise FitFileError(f"{path}: key {k!r} is missing")
    B = d["names"].shape[0]
    for k in ("pose_para", "shape_para", "exp_para", "residual", "converged"):
        if d[k].shape[0] != B:
            raise FitFileError(f"{path}: key {k!r} has {d[k].shape[0]} rows, 'names' has {B}")
    if d["pose_para"].shape[1:] != (7,):
        raise FitFileError(f"{path}: key 'pose_para' has shape {d['pose_para'].shape}, expected ({B}, 7)")
    if "config" in d:
        d["config"] = json.loads(str(d["config"]))
    return d


def flagged_table(fits: dict) -> list[dict]:
    """The flagged fits of a :func:`read_fits` dict: one dict per image with
    name, residual (NME), residual_px, converged, iterations, n_points."""
    out = []
    flagged = fits.get("flagged")
    if flagged is None:
        flagged = ~fits["converged"] | ~(fits["residual"] <= float(fits.get("max_residual", np.inf)))
    for i in np.flatnonzero(flagged):
        out.append({
            "name": str(fits["names"][i]),
            "residual": float(fits["residual"][i]),
            "residual_px": float(fits["residual_px"][i]) if "residual_px" in fits else float("nan"),
            "converged": bool(fits["converged"][i]),
            "iterations": int(fits["iterations"][i]) if "iterations" in fits else -1,
            "n_points": int(fits["n_points"][i]) if "n_points" in fits else -1,
        })
    return out

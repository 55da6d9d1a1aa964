"""Parameter outputs of the 3DDFA family (3DDFA, 2DASL, SynergyNet) decoded to 68 image landmarks.

The decoding of cleardusk/3DDFA (``utils/ddfa.py`` ``reconstruct_vertex``, ``benchmark.py``,
``benchmark_aflw2000.py``), written out:

1. a row of 62 whitened parameters is de-whitened, ``p = p_w * std + mean``, with the
   statistics of ``param_whitening.pkl`` (``param_mean``, ``param_std``);
2. ``p[:12]`` is a 3x4 matrix, row-major: ``M = p[:12].reshape(3, 4)``; ``p[12:52]`` the
   40 identity and ``p[52:62]`` the 10 expression coefficients;
3. the 68 landmarks are ``M[:, :3] @ (u + W_id a + W_exp e) + M[:, 3]`` with the 68-row
   bases (``u_base``, ``w_shp_base``, ``w_exp_base``; x, y, z interleaved per point),
   in the 120x120 crop, and ``y = 120 + 1 - y`` (the 1-based frame of ``pt3d_68``);
4. back to the image with the crop's roi box ``[sx, sy, ex, ey]``:
   ``x (ex - sx) / 120 + sx`` and ``y (ey - sy) / 120 + sy``.  We scale z by
   ``(ex - sx) / 120`` too (the script keeps only x and y).

The result is in the 1-based frame of ``pt3d_68``; :func:`decode_to_image` returns it and
says so.  The statistics file is a pickle in the public releases: it is read with the
numpy-only unpickler of :mod:`dhm_data.formats.pickles`; ``.npz`` files with the same keys
(``param_mean``/``param_std`` or 3DDFA_V2's ``mean``/``std``) are accepted too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dhm_data.errors import ModelFileError, PredictionError
from dhm_data.formats.pickles import read_numpy_pickle
from dhm_data.models.morphable import MorphableModel

N_PARAMS = 62
CROP_SIZE = 120
N_IDENTITY, N_EXPRESSION = 40, 10
#: (mean key, std key) pairs accepted in a statistics file
STAT_KEYS = (("param_mean", "param_std"), ("mean", "std"))


def read_param_stats(path) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)``, each ``(62,)`` float64, from a ``.pkl`` (numpy-only unpickler) or ``.npz``."""
    path = Path(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except Exception as e:  # numpy raises several types on a damaged archive
            raise ModelFileError(f"{path}: cannot read as .npz ({type(e).__name__}: {e})") from e
    else:
        d = read_numpy_pickle(path, ModelFileError)
    if not isinstance(d, dict):
        raise ModelFileError(f"{path}: expected a dict of arrays (param_mean, param_std), found {type(d).__name__}")
    for km, ks in STAT_KEYS:
        if km in d and ks in d:
            mean, std = (np.asarray(d[k], np.float64).ravel() for k in (km, ks))
            if mean.shape != (N_PARAMS,) or std.shape != (N_PARAMS,):
                raise ModelFileError(f"{path}: {km} / {ks} have shapes {mean.shape} / {std.shape}, expected "
                                     f"({N_PARAMS},) each")
            return mean, std
    raise ModelFileError(f"{path}: no whitening statistics (found keys: {', '.join(map(str, d)) or 'none'}); "
                         "expected 'param_mean' and 'param_std' (3DDFA param_whitening.pkl) or 'mean' and 'std'")


def landmark_bases(model: MorphableModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(u (68, 3), W_id (68, 3, 40), W_exp (68, 3, 10))`` of ``model``'s 68 landmarks."""
    lm = model.landmark_model()
    if lm.n_identity < N_IDENTITY or lm.n_expression < N_EXPRESSION:
        raise ModelFileError(f"{model.source or model.name}: the 3DDFA parameters need 40 identity and 10 "
                             f"expression components; the model has {lm.n_identity} and {lm.n_expression}")
    if not np.isfinite(lm.mean).all():
        raise ModelFileError(f"{model.source or model.name}: not every one of the 68 landmarks maps to a vertex")
    return lm.mean, lm.identity_basis[..., :N_IDENTITY], lm.expression_basis[..., :N_EXPRESSION]


def decode_params(params, mean, std, model: MorphableModel) -> np.ndarray:
    """Whitened ``(N, 62)`` parameters -> ``(N, 68, 3)`` points in the 120x120 crop,
    1-based frame (``y = 120 + 1 - y``), steps 1-3 of the module docstring."""
    p = np.asarray(params, np.float64)
    if p.ndim != 2 or p.shape[1] != N_PARAMS:
        raise PredictionError(f"3DDFA parameters: found shape {p.shape}, expected (N, {N_PARAMS}) (12 pose = a 3x4 "
                              "matrix row-major, 40 identity, 10 expression; whitened)")
    p = p * std + mean
    M = p[:, :12].reshape(-1, 3, 4)
    u, W_id, W_exp = landmark_bases(model)
    shape = u + np.einsum("vck,nk->nvc", W_id, p[:, 12:52]) + np.einsum("vck,nk->nvc", W_exp, p[:, 52:62])
    pts = np.einsum("nij,nvj->nvi", M[:, :, :3], shape) + M[:, None, :, 3]
    pts[..., 1] = CROP_SIZE + 1 - pts[..., 1]
    return pts


def crop_to_image(points, roi_boxes) -> np.ndarray:
    """``(N, 68, 3)`` crop points -> image points with roi boxes ``(N, 4)`` ``[sx, sy, ex, ey]``:
    ``x (ex - sx) / 120 + sx``, ``y (ey - sy) / 120 + sy``, ``z (ex - sx) / 120``."""
    P = np.array(points, np.float64)
    b = np.asarray(roi_boxes, np.float64)
    if b.shape != (len(P), 4):
        raise PredictionError(f"roi boxes: found shape {b.shape}, expected ({len(P)}, 4) [sx, sy, ex, ey]")
    sx, sy = (b[:, 2] - b[:, 0]) / CROP_SIZE, (b[:, 3] - b[:, 1]) / CROP_SIZE
    P[..., 0] = P[..., 0] * sx[:, None] + b[:, None, 0]
    P[..., 1] = P[..., 1] * sy[:, None] + b[:, None, 1]
    P[..., 2] = P[..., 2] * sx[:, None]
    return P


def decode_to_image(params, mean, std, model: MorphableModel, roi_boxes) -> np.ndarray:
    """Steps 1-4: ``(N, 68, 3)`` landmarks in the **1-based** image frame of ``pt3d_68``."""
    return crop_to_image(decode_params(params, mean, std, model), roi_boxes)


def clipped_boxes(roi_boxes) -> np.ndarray:
    """``(N,)`` bool: boxes that are not square (clipped to the image, see the
    ``3ddfa.clipped-roi-boxes`` quirk)."""
    b = np.asarray(roi_boxes, np.float64)
    return np.abs((b[:, 2] - b[:, 0]) - (b[:, 3] - b[:, 1])) > 1e-6

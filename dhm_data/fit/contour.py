"""The jaw in a fit: landmark marching on the prepared model rows (the rule
itself is :func:`dhm_data.geometry.contour.march_jaw`) and, for models
without contour lines, the down-weighting fallback of the fixed jaw vertices.

Marching: Zhu et al. 2016 ("Face alignment across large poses: a 3D
solution", section 4.1); for lists shared by several landmarks, eos's
nearest-vertex correspondence (``get_nearest_contour_correspondences``).
Fallback: with silhouette labels and fixed jaw vertices, the vertex drifts
off the silhouette as the cheek turns away from the camera, so the jaw is
down-weighted by ``jaw_weight`` and the far side further by ``cos(yaw)``;
the 51 inner points, which are exact, dominate.
"""

from __future__ import annotations

import numpy as np

from dhm_data.fit.model_rows import Prepared, shape_all
from dhm_data.geometry.contour import march_jaw

__all__ = ["march_contour", "jaw_point_weights"]


def march_contour(prep: Prepared, rows: np.ndarray, R: np.ndarray, alpha: np.ndarray, beta: np.ndarray,
                  s=None, t=None, obs=None, valid=None) -> np.ndarray:
    """Move the 17 jaw landmarks' rows to their marched vertices for the
    current pose and shape.

    ``rows`` ``(B, 68)`` prepared rows (updated in place and returned), ``R``
    ``(B, 3, 3)``, ``alpha`` ``(B, K)``, ``beta`` ``(B, E)``.  Lists shared by
    several landmarks (eos's SFM contour, one list per face side) are matched
    to the observed landmark, which needs the camera ``s`` ``(B,)``, ``t``
    ``(B, 3)`` and the observations ``obs`` ``(B, 68, >=2)`` (posed frame)
    with ``valid`` ``(B, 68)``; without them the extreme rule applies.
    """
    if prep.contour_rows is None:
        return rows
    S_all = shape_all(prep, alpha, beta)
    near = obs is not None and bool(np.any(prep.contour_shared))
    posed = []
    for line in prep.contour_rows:
        p = np.einsum("bdc,blc->bld", R[:, :2], S_all[:, line])  # (B, L, 2) x, y (up), model units
        posed.append(s[:, None, None] * p + t[:, None, :2] if near else p)
    k = march_jaw(posed, prep.contour_shared, obs[:, :17, :2] if near else None, valid[:, :17] if near else None)
    for j, line in enumerate(prep.contour_rows):
        rows[:, j] = line[k[:, j]]
    return rows


def jaw_point_weights(base_w: np.ndarray, R: np.ndarray, far_jaw_cos_yaw: bool) -> np.ndarray:
    """Per-point weights ``(B, 68)`` of the fallback for this pose: the base
    weights (0 = missing, ``jaw_weight`` on the jaw) and, with
    ``far_jaw_cos_yaw``, ``cos(yaw)`` on the jaw side turning away from the
    camera (yaw from ``R`` ``(B, 3, 3)``)."""
    w = base_w.copy()
    if far_jaw_cos_yaw:
        yaw = np.arcsin(np.clip(-R[:, 0, 2], -1, 1))
        cosy = np.cos(yaw)
        far_left_jaw = yaw > 0  # yaw > 0 turns the image-right jaw (9..16) away
        w[:, 9:17] *= np.where(far_left_jaw, cosy, 1.0)[:, None]
        w[:, 0:8] *= np.where(far_left_jaw, 1.0, cosy)[:, None]
    return w

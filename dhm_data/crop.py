"""Square face crops from ground-truth landmarks (no face detector).

Rule (documented in the README): take the tight box of the valid 2D landmarks,
centre the square crop on the box centre, side = ``(1 + margin) * max(w, h)``
(default margin 0.3), and resample it to ``size x size`` pixels.

Coordinates are 0-based pixel centres in both frames.  The crop affine ``A``
(2x3) maps a source point ``u`` to crop ``A @ [u, 1]``; with ``k = size / side``
and the square's top-left *edge* at ``(x0, y0)`` (= centre - side/2; source
pixel ``j`` covers ``[j - 0.5, j + 0.5)``), crop pixel ``i`` covers source
``[x0 + i/k, x0 + (i+1)/k)`` whose centre is ``x0 + (i + 0.5)/k``, so
``i = k (x - x0) - 0.5``: the box centre lands on ``(size - 1) / 2``.
"""

from __future__ import annotations

import cv2
import numpy as np


class CropError(ValueError):
    """The landmarks give no usable box (all missing, or zero size)."""


def landmark_box(landmarks: np.ndarray) -> np.ndarray:
    """Tight box ``[x_min, y_min, x_max, y_max]`` of the finite rows of ``(N, 2+)``."""
    pts = np.asarray(landmarks, np.float64)[:, :2]
    ok = np.all(np.isfinite(pts), axis=1)
    if not ok.any():
        raise CropError("no finite landmark to take a box from")
    p = pts[ok]
    box = np.concatenate([p.min(0), p.max(0)])
    if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
        raise CropError(f"landmark box has zero width or height: {box.tolist()}")
    return box


def crop_affine(landmarks: np.ndarray, size: int, margin: float) -> np.ndarray:
    """The 2x3 source->crop affine of the square crop around ``landmarks``."""
    box = landmark_box(landmarks)
    centre = (box[:2] + box[2:]) / 2.0
    side = (1.0 + margin) * float(np.max(box[2:] - box[:2]))
    k = size / side
    x0, y0 = centre - side / 2.0
    return np.array([[k, 0.0, -k * x0 - 0.5], [0.0, k, -k * y0 - 0.5]])


def apply_affine(A: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map ``(..., N, 2+)`` points with the 2x3 affine; extra columns (z) are
    scaled by the affine's scale so depth stays in crop-pixel units."""
    P = np.array(points, np.float64, copy=True)
    xy = P[..., :2]
    P[..., :2] = xy @ A[:, :2].T + A[:, 2]
    if P.shape[-1] > 2:
        P[..., 2:] *= np.sqrt(abs(np.linalg.det(A[:, :2])))
    return P


def invert_affine(A: np.ndarray) -> np.ndarray:
    """The inverse 2x3 affine (crop -> source)."""
    return cv2.invertAffineTransform(np.asarray(A, np.float64))


def choose_reduction(A: np.ndarray, max_reduction: int = 8) -> int:
    """Largest JPEG DCT reduction r in {1, 2, 4, 8} that still leaves at least
    one decoded pixel per crop pixel (scale k = crop/source <= 1/r)."""
    k = float(np.sqrt(abs(np.linalg.det(A[:, :2]))))
    r = 1
    while r * 2 <= max_reduction and k * (r * 2) <= 1.0:
        r *= 2
    return r


def affine_for_reduced(A: np.ndarray, r: int) -> np.ndarray:
    """Affine from a reduced image's pixels to the crop: reduced pixel p has
    its centre at source ``r p + (r - 1) / 2``."""
    S = np.array([[r, 0.0, (r - 1) / 2.0], [0.0, r, (r - 1) / 2.0], [0.0, 0.0, 1.0]])
    return (np.vstack([A, [0, 0, 1]]) @ S)[:2]


def warp_crop(image: np.ndarray, A: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Resample ``image`` ``(H, W, C)`` into the ``size x size`` crop given by
    ``A`` (bilinear, black outside the image), into ``out`` when given
    (a contiguous ``(size, size, C)`` array of the image's dtype)."""
    return cv2.warpAffine(
        image, np.asarray(A, np.float64), (size, size), dst=out, flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )

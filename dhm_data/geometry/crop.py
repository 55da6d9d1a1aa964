"""Square face crops from ground-truth landmarks (no face detector).

Rule (docs/conventions.md section 5): take the tight box of the valid 2D landmarks,
centre a square on the box centre with side ``s = (1 + margin) * max(w, h)``
(default margin 0.3), snap it to whole source pixels, and resample it to
``size x size`` pixels.

Snapping: the square becomes the window of ``n = r * round(s / r)`` source
pixels starting at pixel ``x0 = r * round((cx - (n - 1) / 2) / r)`` (likewise
``y0``), where ``r`` in {1, 2, 4, 8} is the JPEG DCT reduction the decoder may
use (the largest with ``s >= r * size``, so at least one decoded pixel per crop
pixel; ``round`` is ``floor(v + 0.5)``).  The window's centre is within
``r / 2`` source pixels of the box centre and its side within ``r / 2`` of
``s``.  A pixel-aligned window makes the crop a plain resize of a sub-image
(three times faster than a general warp) while the affine stays exact.

Coordinates are 0-based pixel centres in both frames.  The crop affine ``A``
(2x3) maps a source point ``u`` to crop ``A @ [u, 1]``; with ``k = size / n``
and the window's top-left *edge* at ``(x0 - 0.5, y0 - 0.5)`` (source pixel
``j`` covers ``[j - 0.5, j + 0.5)``), crop pixel ``i`` covers source
``[x0 - 0.5 + i/k, x0 - 0.5 + (i+1)/k)``, so ``i = k (x - x0 + 0.5) - 0.5``.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from dhm_data.errors import CropError


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


class CropWindow(NamedTuple):
    """A square window of whole source pixels: columns ``x0 .. x0 + n - 1``,
    rows ``y0 .. y0 + n - 1`` (may reach outside the image), and the JPEG
    reduction ``r`` it is aligned to (``x0``, ``y0`` and ``n`` are multiples
    of ``r``)."""

    x0: int
    y0: int
    n: int
    r: int


def _round(v: float) -> int:
    return int(np.floor(v + 0.5))


def _square(landmarks: np.ndarray, margin: float) -> tuple[float, float, float]:
    """Centre x, y and side ``(1 + margin) * max(w, h)`` of the square around the landmark box."""
    box = landmark_box(landmarks)
    cx, cy = (box[:2] + box[2:]) / 2.0
    return float(cx), float(cy), (1.0 + margin) * float(np.max(box[2:] - box[:2]))


def crop_window(landmarks: np.ndarray, size: int, margin: float, max_reduction: int = 8) -> CropWindow:
    """The snapped square window of the crop rule (module docstring); ``r``
    is the largest JPEG reduction up to ``max_reduction`` that leaves at least
    one decoded pixel per crop pixel."""
    cx, cy, s = _square(landmarks, margin)
    r = 1
    while r * 2 <= max_reduction and s >= r * 2 * size:
        r *= 2
    n = r * max(1, _round(s / r))
    return CropWindow(r * _round((cx - (n - 1) / 2.0) / r), r * _round((cy - (n - 1) / 2.0) / r), n, r)


def window_affine(window: CropWindow, size: int) -> np.ndarray:
    """The 2x3 source->crop affine of ``window`` resampled to ``size x size``."""
    k = size / window.n
    return np.array([[k, 0.0, -k * (window.x0 - 0.5) - 0.5], [0.0, k, -k * (window.y0 - 0.5) - 0.5]])


def crop_affine(landmarks: np.ndarray, size: int, margin: float, max_reduction: int = 8) -> np.ndarray:
    """The 2x3 source->crop affine of the square crop around ``landmarks``."""
    return window_affine(crop_window(landmarks, size, margin, max_reduction), size)


def unsnapped_crop_affine(points: np.ndarray, size: int, margin: float) -> np.ndarray:
    """The crop rule's square *before* snapping, as a 2x3 affine: the box
    centre maps to ``(size - 1) / 2`` exactly.  For points that are not image
    pixels (a model's mean shape in its own units), where whole-pixel
    snapping would be meaningless."""
    cx, cy, s = _square(points, margin)
    k = size / s
    x0, y0 = cx - s / 2.0, cy - s / 2.0  # the square's top-left edge
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


def extract_crop(image: np.ndarray, window: CropWindow, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """The ``size x size`` crop of ``window`` from ``image`` ``(H, W, C)``
    uint8 decoded at reduction ``window.r`` (pixel ``p`` of ``image`` is
    source pixel ``r p .. r p + r - 1``); black outside the image.

    Equal to :func:`warp_crop` with ``affine_for_reduced(window_affine(window,
    size), r)`` up to the interpolators' fixed-point rounding (at most 1 grey
    level): when the window has at least ``size`` pixels every crop pixel
    centre falls inside it, so bilinear ``cv2.resize`` of the sub-image reads
    exactly the pixels the affine warp reads.  A window smaller than the crop
    (enlarging) uses the warp, which also reads the pixels just outside it.
    """
    r = window.r
    q = window.n // r
    if q < size:
        return warp_crop(image, affine_for_reduced(window_affine(window, size), r), size, out)
    h, w = image.shape[:2]
    x0, y0 = window.x0 // r, window.y0 // r
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + q, w), min(y0 + q, h)
    if xa >= xb or ya >= yb:  # nothing of the image inside the window
        if out is None:
            out = np.zeros((size, size) + image.shape[2:], image.dtype)
        out[...] = 0
        return out
    roi = image[ya:yb, xa:xb]
    if (xa, ya, xb, yb) != (x0, y0, x0 + q, y0 + q):
        roi = cv2.copyMakeBorder(roi, ya - y0, y0 + q - yb, xa - x0, x0 + q - xb, cv2.BORDER_CONSTANT, value=0)
    return cv2.resize(roi, (size, size), dst=out, interpolation=cv2.INTER_LINEAR)

"""The seed paper's 3-channel 3D Diffusion Heat Map (CONVENTIONS.md section 5).

For ``L`` posed 3D landmarks with crop positions ``(x_l, y_l)``:

1. per axis ``j`` in x, y, z, min-max normalise the L values to [0, 1]:
   ``v_lj = (p_lj - min_j) / (max_j - min_j)`` (0 when the axis has no spread);
2. spread each landmark over the crop with an isotropic 2D Gaussian of
   standard deviation ``sigma`` pixels centred at its exact sub-pixel position,
   evaluated at pixel centres, truncated at ``radius = ceil(4 sigma)``:
   ``g_l(p) = exp(-|p - x_l|^2 / (2 sigma^2))``;
3. channel ``j`` at pixel ``p`` holds ``g_l(p) * v_lj``.

Overlaps (our documented choice): at each pixel the landmark with the
**largest Gaussian weight wins** (ties: the lower landmark index), for all three
channels together.  So values stay in [0, 1], every channel is the same
landmark's value at a pixel, and a landmark's value is never mixed with a
neighbour's.  Missing landmarks (NaN rows) are left out of normalisation and
rendering.  Output ``(size, size, 3)`` float32, channels x, y, z.
"""

from __future__ import annotations

import math

import numpy as np


def normalise_coordinates(landmarks_3d: np.ndarray) -> np.ndarray:
    """Per-axis min-max normalisation of ``(L, 3)`` to [0, 1] (NaN rows stay NaN)."""
    P = np.asarray(landmarks_3d, np.float64)
    lo = np.nanmin(P, axis=0)
    span = np.nanmax(P, axis=0) - lo
    return np.where(span > 0, (P - lo) / np.where(span > 0, span, 1.0), 0.0)


def render_dhm(landmarks_3d: np.ndarray, size: int, sigma: float = 1.0) -> np.ndarray:
    """Render the DHM of ``(L, 3)`` landmarks whose x, y are crop pixels
    (0-based centres) and z is depth (any unit: it is normalised)."""
    P = np.asarray(landmarks_3d, np.float64)
    out = np.zeros((size, size, 3), np.float32)
    valid = np.all(np.isfinite(P), axis=1)
    if not valid.any():
        return out
    values = normalise_coordinates(P[valid])
    xy = P[valid, :2]
    radius = max(1, math.ceil(4 * sigma))
    offs = np.arange(-radius, radius + 1)
    cx = np.rint(xy[:, 0]).astype(np.int64)
    cy = np.rint(xy[:, 1]).astype(np.int64)
    px = cx[:, None, None] + offs[None, None, :]          # (L, 1, D)
    py = cy[:, None, None] + offs[None, :, None]          # (L, D, 1)
    d2 = (px - xy[:, 0, None, None]) ** 2 + (py - xy[:, 1, None, None]) ** 2   # (L, D, D)
    px, py = np.broadcast_arrays(px, py)
    inside = ((px >= 0) & (px < size) & (py >= 0) & (py < size)).ravel()
    flat = (py * size + px).ravel()[inside]
    d2 = d2.ravel()[inside]
    lm = np.repeat(np.arange(len(xy)), (2 * radius + 1) ** 2)[inside]
    # Equal sigmas: the largest weight is the nearest centre.  Pixels reached
    # by one landmark only are written directly; for contested pixels a stable
    # sort on (pixel, distance) puts the nearest landmark first (ties: the
    # lower index, as entries are laid out in landmark order).
    contested = np.bincount(flat, minlength=size * size)[flat] > 1
    if contested.any():
        c = np.flatnonzero(contested)
        c = c[np.argsort(flat[c] * (2.0 * (radius + 1) ** 2) + d2[c], kind="stable")]
        keep = np.ones(len(c), bool)
        keep[1:] = flat[c[1:]] != flat[c[:-1]]
        contested[c[keep]] = False
    win = ~contested
    flat, lm = flat[win], lm[win]
    w = np.exp(-d2[win] / (2.0 * sigma * sigma))
    out.reshape(-1, 3)[flat] = (w[:, None] * values[lm]).astype(np.float32)
    return out

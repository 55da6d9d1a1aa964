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


def render_dhm(landmarks_3d: np.ndarray, size: int, sigma: float = 1.0, out: np.ndarray | None = None) -> np.ndarray:
    """Render the DHM of ``(L, 3)`` landmarks whose x, y are crop pixels
    (0-based centres) and z is depth (any unit: it is normalised).

    Returns ``(size, size, 3)`` float32; with ``out`` (that shape and dtype)
    it is overwritten and returned.
    """
    if out is None:
        out = np.zeros((size, size, 3), np.float32)
    else:
        out.fill(0.0)
    flat, values = dhm_pixels(landmarks_3d, size, sigma)
    o = out.reshape(-1, 3)
    for ch in range(3):
        o[:, ch][flat] = values[:, ch]
    return out


def dhm_pixels(landmarks_3d: np.ndarray, size: int, sigma: float = 1.0):
    """The non-zero pixels of :func:`render_dhm`, sparse: ``flat`` ``(P,)``
    int64 indices ``y * size + x`` (each at most once) and ``values``
    ``(P, 3)`` float64, channels x, y, z.  Every other pixel is 0."""
    P = np.asarray(landmarks_3d, np.float64)
    valid = np.isfinite(P).all(axis=1)
    if not valid.all():
        if not valid.any():
            return np.zeros(0, np.int64), np.zeros((0, 3))
        P = P[valid]
    lo = P.min(axis=0)
    span = P.max(axis=0) - lo
    values = (P - lo) / np.where(span > 0, span, np.inf)        # normalise_coordinates, no NaN left here
    radius = max(1, math.ceil(4 * sigma))
    D = 2 * radius + 1
    offs = np.arange(-radius, radius + 1)
    c = np.rint(P[:, :2]).astype(np.int64)                      # (L, 2) nearest pixel
    dx = (c[:, 0, None] + offs) - P[:, 0, None]                 # (L, D)
    dy = (c[:, 1, None] + offs) - P[:, 1, None]
    d2 = (dy[:, :, None] ** 2 + dx[:, None, :] ** 2).reshape(-1)          # (L*D*D,)
    px = np.broadcast_to(c[:, 0, None, None] + offs, (len(P), D, D)).reshape(-1)
    py = np.broadcast_to(c[:, 1, None, None] + offs[:, None], (len(P), D, D)).reshape(-1)
    lm = np.repeat(np.arange(len(P)), D * D)
    inside = (px >= 0) & (px < size) & (py >= 0) & (py < size)
    if not inside.all():
        px, py, d2, lm = px[inside], py[inside], d2[inside], lm[inside]
    flat = py * size + px
    # Equal sigmas: the largest weight is the nearest centre.  Only landmarks
    # whose patches overlap another's can lose a pixel; among their entries a
    # stable sort on (pixel, distance) puts the nearest landmark first (ties:
    # the lower index, as entries are laid out in landmark order).
    gap = np.maximum(np.abs(c[:, 0, None] - c[None, :, 0]), np.abs(c[:, 1, None] - c[None, :, 1]))
    np.fill_diagonal(gap, 2 * D)
    crowded = (gap < D).any(axis=1)
    if crowded.any():
        sel = np.flatnonzero(crowded[lm])
        sel = sel[np.argsort(flat[sel] * (2.0 * (radius + 1) ** 2) + d2[sel], kind="stable")]
        lose = np.zeros(len(sel), bool)
        lose[1:] = flat[sel[1:]] == flat[sel[:-1]]
        if lose.any():
            keep = np.ones(len(flat), bool)
            keep[sel[lose]] = False
            flat, d2, lm = flat[keep], d2[keep], lm[keep]
    w = np.exp(d2 * (-0.5 / (sigma * sigma)))
    return flat, w[:, None] * values[lm]


#: One pixel's three uint8 channels as a single item, for one-step scatters.
_RGB_BYTES = np.dtype((np.void, 3))


def render_dhm_quantised(landmarks_3d: np.ndarray, size: int, sigma: float = 1.0,
                         out: np.ndarray | None = None) -> np.ndarray:
    """The stored form of the DHM: exactly
    ``schema.quantise(render_dhm(landmarks_3d, size, sigma))``, ``(size, size,
    3)`` uint8, written into ``out`` when given (which must be all zeros: only
    non-zero pixels are written).

    Faster because a pixel whose weight quantises to 0 for every value in
    [0, 1] (``255 w < 0.49``, i.e. farther than ``sigma sqrt(2 ln(255/0.49))``
    = 3.54 sigma from its landmark) is dropped before the overlap rule: any
    landmark that would win such a pixel is at least as far, so it is 0 in the
    quantised map either way.  The rest are sorted once on (pixel, distance),
    stable in landmark order, and the first entry of each pixel wins.
    """
    from .schema import QUANT_LEVELS

    if out is None:
        out = np.zeros((size, size, 3), np.uint8)
    P = np.asarray(landmarks_3d, np.float64)
    valid = np.isfinite(P).all(axis=1)
    if not valid.all():
        if not valid.any():
            return out
        P = P[valid]
    lo = P.min(axis=0)
    span = P.max(axis=0) - lo
    values = (P - lo) / np.where(span > 0, span, np.inf)       # normalise_coordinates, no NaN left here
    radius = max(1, math.ceil(4 * sigma))
    D = 2 * radius + 1
    offs = np.arange(-radius, radius + 1)
    c = np.rint(P[:, :2]).astype(np.int64)
    gx = c[:, 0, None] + offs                                   # (L, D) pixel columns of each window
    gy = c[:, 1, None] + offs                                   # (L, D) pixel rows
    dx2 = (gx - P[:, 0, None]) ** 2
    dy2 = (gy - P[:, 1, None]) ** 2
    dx2[(gx < 0) | (gx >= size)] = np.inf                       # outside the crop: never drawn
    dy2[(gy < 0) | (gy >= size)] = np.inf
    d2 = (dy2[:, :, None] + dx2[:, None, :]).reshape(-1)        # (L*D*D,) in landmark order
    sel = np.flatnonzero(d2 <= 2.0 * sigma * sigma * math.log(QUANT_LEVELS / 0.49))
    lm, ij = np.divmod(sel, D * D)
    row, col = np.divmod(ij, D)
    flat = np.take(gy.reshape(-1), lm * D + row) * size + np.take(gx.reshape(-1), lm * D + col)
    d2 = np.take(d2, sel)
    # d2 < 2 (radius + 1)^2 inside a window, so the key orders by pixel, then distance
    order = np.argsort(flat * (4.0 * (radius + 1) ** 2) + d2, kind="stable")
    ordered = np.take(flat, order)
    first = np.ones(len(order), bool)
    first[1:] = ordered[1:] != ordered[:-1]
    win = order[first]
    w = np.exp(np.take(d2, win) * (-0.5 / (sigma * sigma)))
    q = np.empty((len(win), 3), np.float32)                     # float32(w v) as render_dhm stores it
    np.multiply(np.take(values, np.take(lm, win), axis=0), w[:, None], out=q, casting="same_kind")
    q *= np.float32(QUANT_LEVELS)                               # then schema.quantise: rint(255 v)
    np.rint(q, out=q)
    out.reshape(-1, 3).view(_RGB_BYTES)[np.take(flat, win), 0] = q.astype(np.uint8).view(_RGB_BYTES)[:, 0]
    return out

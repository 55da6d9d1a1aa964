"""Landmark error: a distance per point times a named normaliser (the shape
of menpofit's error module), written once for every part of the package
that measures how far landmarks are from others -- the evaluation's NME,
the fit's residual, the build's label check.

Points are ``(..., N, D)`` arrays in pixels (0- or 1-based alike, as long as
both sides agree).  A point missing on either side (NaN or inf in any
coordinate) is left out of both the distance and the normaliser.

The normaliser of the 2D NME of 3DDFA (Zhu et al., "Face Alignment Across
Large Poses: A 3D Solution", CVPR 2016; ``benchmark_aflw2000.py`` of
cleardusk/3DDFA) is ``sqrt(w h)`` of the tight box of the ground-truth x, y
(:func:`box_size`); the 3D variants (2DASL, Tu et al. 2019) divide a 3D
distance by the same 2D box.
"""

from __future__ import annotations

import warnings

import numpy as np


def point_errors(pred, gt, dims: int = 2) -> np.ndarray:
    """``(..., N)`` Euclidean distances over the first ``dims`` coordinates
    of ``pred`` and ``gt`` ``(..., N, >=dims)``; NaN where either point is
    missing."""
    p = np.asarray(pred, np.float64)[..., :dims]
    g = np.asarray(gt, np.float64)[..., :dims]
    ok = np.isfinite(p).all(-1) & np.isfinite(g).all(-1)
    d = np.sqrt((np.where(ok[..., None], p - g, 0.0) ** 2).sum(-1))
    return np.where(ok, d, np.nan)


def box_size(points) -> np.ndarray:
    """``(...)`` ``sqrt(w h)`` of the tight box of the finite x, y of
    ``points`` ``(..., N, >=2)``; NaN where no point is finite."""
    g = np.asarray(points, np.float64)[..., :2]
    g = np.where(np.isfinite(g).all(-1, keepdims=True), g, np.nan)
    with warnings.catch_warnings():  # a sample with no finite point is NaN by design
        warnings.simplefilter("ignore", RuntimeWarning)
        wh = np.nanmax(g, axis=-2) - np.nanmin(g, axis=-2)
    return np.sqrt(wh[..., 0] * wh[..., 1])


def mean_error(pred, gt, dims: int = 2) -> np.ndarray:
    """``(...)`` mean of :func:`point_errors` over the points present on
    both sides, in pixels; NaN where there is none."""
    d = point_errors(pred, gt, dims)
    n = np.isfinite(d).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.nansum(d, -1) / np.maximum(n, 1), np.nan)


def nme(pred, gt, dims: int = 2) -> np.ndarray:
    """``(...)`` normalised mean error, a fraction (not %): :func:`mean_error`
    divided by :func:`box_size` of the ground-truth points present on both
    sides.  NaN where no point is shared; inf where their box has no area."""
    return nme_and_mean_error(pred, gt, dims)[0]


def nme_and_mean_error(pred, gt, dims: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``(nme(pred, gt), mean_error(pred, gt))``, the mean error computed
    once for both (a caller that reports both, e.g. a fit's residuals)."""
    p = np.asarray(pred, np.float64)
    g = np.asarray(gt, np.float64)
    shared = np.isfinite(p[..., :dims]).all(-1) & np.isfinite(g[..., :dims]).all(-1)
    size = box_size(np.where(shared[..., None], g, np.nan))
    err = mean_error(p, g, dims)
    with np.errstate(invalid="ignore", divide="ignore"):
        return err / size, err

"""Camera estimation from point correspondences, batched: the affine camera
of Hartley & Zisserman (Alg. 7.2, "gold standard" for an affine camera, with
Hartley's isotropic normalisation, section 4.4.4), its projection to the
nearest scaled orthographic camera by SVD (H&Z section 6.3.4; what eos's
``estimate_orthographic_projection_linear`` does), and Umeyama's (1991)
least-squares similarity for 3D correspondences.

Frames: image points are in the *posed model frame* of
:func:`dhm_data.geometry.camera.image_to_model_frame` (x right, y up);
model points are model coordinates.  Arrays carry a leading batch axis
``B``; ``weights`` ``(B, N)`` are 0 for missing points.
"""

from __future__ import annotations

import numpy as np

from dhm_data.fit.linalg import solve_spd, svd

__all__ = ["face_size", "hartley_normalisation", "estimate_affine_camera", "affine_to_similarity",
           "optimal_scale_translation", "umeyama_similarity"]

_RIDGE4 = 1e-12 * np.eye(4)
_CYC1, _CYC2 = np.array([1, 2, 0]), np.array([2, 0, 1])  # (a x b)_i = a_{i+1} b_{i+2} - a_{i+2} b_{i+1}


def _centred(points: np.ndarray, weights: np.ndarray):
    """``points`` ``(..., N, D)`` (zeroed where the weight is 0) minus their
    weighted centroid, the centroid ``(..., D)`` and the weight sums ``(...)``
    (at least 1e-300)."""
    w = weights[..., None]
    P = np.where(w > 0, points, 0.0)
    wsum = np.maximum(weights.sum(-1), 1e-300)
    c = (w * P).sum(-2) / wsum[..., None]
    return P - c[..., None, :], c, wsum


def face_size(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted RMS distance of points from their weighted centroid.

    ``points`` ``(..., N, D)``, ``weights`` ``(..., N)`` (0 = ignore; NaN
    points must have weight 0).  Returns ``(...)``.  This is the scale used by
    Hartley normalisation and the face-size normalisation of the data term.
    """
    P0, _, wsum = _centred(points, weights)
    return np.sqrt((weights * (P0**2).sum(-1)).sum(-1) / wsum)


def hartley_normalisation(points: np.ndarray, weights: np.ndarray):
    """Isotropic normalisation of Hartley (1997), H&Z section 4.4.4.

    Translate the (weighted) centroid to the origin and scale so the RMS
    distance from it is ``sqrt(D)``.  ``points`` ``(B, N, D)``, ``weights``
    ``(B, N)``.  Returns ``(normalised points (B, N, D), centroid (B, D),
    scale (B,))`` with ``normalised = (points - centroid) * scale``.
    """
    D = points.shape[-1]
    P0, c, wsum = _centred(points, weights)
    rms = np.sqrt((weights * (P0**2).sum(-1)).sum(-1) / wsum)  # face_size
    scale = np.sqrt(D) / np.maximum(rms, 1e-300)
    return P0 * scale[:, None, None], c, scale


def estimate_affine_camera(image_points: np.ndarray, model_points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Gold-standard affine camera from point correspondences (H&Z Alg. 7.2).

    Hartley-normalise the 2D image points and the 3D model points
    (:func:`hartley_normalisation`), solve the linear least squares for the
    2x4 affine camera ``x = M X + m`` (the two rows are independent 4-unknown
    weighted problems sharing one normal matrix; for an affine camera with
    image noise this linear solution is the ML estimate), then undo the
    normalisation.

    ``image_points`` ``(B, N, 2)``, ``model_points`` ``(B, N, 3)``,
    ``weights`` ``(B, N)`` (0 = missing).  Returns ``(B, 2, 4)`` ``[M | m]``.
    """
    xn, cx, sx = hartley_normalisation(image_points, weights)
    Xn, cX, sX = hartley_normalisation(model_points, weights)
    B, N = weights.shape
    Xh = np.empty((B, N, 6))  # [Xn, 1, xn]: the normal matrix and right-hand side in one product
    Xh[..., :3], Xh[..., 3], Xh[..., 4:] = Xn, 1.0, xn
    Gr = (Xh[..., :4] * weights[..., None]).transpose(0, 2, 1) @ Xh  # (B,4,6)
    G = Gr[:, :, :4] + _RIDGE4
    Pn = solve_spd(G, Gr[:, :, 4:]).transpose(0, 2, 1)  # (B,2,4)
    # Denormalise: x = cx + (1/sx) * (Mn (sX (X - cX)) + mn)
    M = Pn[:, :, :3] * (sX / sx)[:, None, None]
    m = cx + Pn[:, :, 3] / sx[:, None] - np.einsum("bij,bj->bi", M, cX)
    return np.concatenate([M, m[..., None]], axis=-1)


def affine_to_similarity(affine: np.ndarray, image_points: np.ndarray, model_points: np.ndarray, weights: np.ndarray):
    """Nearest scaled orthographic camera to an affine one (SVD projection).

    ``M = U diag(d1, d2) V^T``; the rotation's first two rows are ``U V^T``
    (the closest matrix with orthonormal rows, Frobenius norm; the projection
    eos and H&Z section 6.3.4 use), the third their cross product (a proper
    rotation).  The scale is then the least-squares optimum for that
    rotation, and the translation the optimal one for (s, R) -- both closed
    form, so the returned camera is never worse than ``s = (d1 + d2) / 2``.

    Returns ``(s (B,), R (B, 3, 3), t (B, 2))`` in the posed model frame.
    """
    U, d, Vt = svd(affine[:, :, :3])  # U (B,2,2), Vt (B,2,3)
    R = np.empty((len(U), 3, 3))
    R2 = R[:, :2] = U @ Vt
    a, b = R2[:, 0], R2[:, 1]
    R[:, 2] = a[:, _CYC1] * b[:, _CYC2] - a[:, _CYC2] * b[:, _CYC1]  # a x b
    s, t = optimal_scale_translation(R2, image_points, model_points, weights)
    return s, R, t


def optimal_scale_translation(Rp, obs, X, weights):
    """Least-squares ``s`` and ``t`` of ``obs ~ s Rp X + t`` for a fixed
    rotation part ``Rp`` ``(B, D, 3)``; ``obs`` ``(B, N, D)``."""
    w = weights[..., None]
    wsum = np.maximum(weights.sum(1), 1e-300)[:, None]
    observed = w > 0
    obs0 = np.where(observed, obs, 0.0)
    X0 = np.where(observed, X, 0.0)
    co = (w * obs0).sum(1) / wsum
    cX = (w * X0).sum(1) / wsum
    RX = np.einsum("bdc,bnc->bnd", Rp, X0 - cX[:, None])
    num = (w * (obs0 - co[:, None]) * RX).sum((1, 2))
    den = np.maximum((w * RX * RX).sum((1, 2)), 1e-300)
    s = np.maximum(num / den, 1e-300)
    t = co - s[:, None] * np.einsum("bdc,bc->bd", Rp, cX)
    return s, t


def umeyama_similarity(observed: np.ndarray, model_points: np.ndarray, weights: np.ndarray):
    """Weighted least-squares similarity ``observed ~ s R X + t`` in 3D
    (Umeyama 1991, "Least-squares estimation of transformation parameters
    between two point patterns"), used when 3D landmark estimates are given.

    ``observed`` ``(B, N, 3)`` posed frame, ``model_points`` ``(B, N, 3)``,
    ``weights`` ``(B, N)``.  The cross-covariance's SVD gives the rotation,
    with the sign correction that keeps ``det R = +1``.  Returns
    ``(s (B,), R (B, 3, 3), t (B, 3))``.
    """
    w = weights[..., None]
    wsum = np.maximum(weights.sum(1), 1e-300)
    Y = np.where(w > 0, observed, 0.0)
    X = np.where(w > 0, model_points, 0.0)
    cY = (w * Y).sum(1) / wsum[:, None]
    cX = (w * X).sum(1) / wsum[:, None]
    Y0 = Y - cY[:, None]
    X0 = X - cX[:, None]
    C = np.einsum("bni,bnj->bij", w * Y0, X0) / wsum[:, None, None]  # (B,3,3)
    U, d, Vt = np.linalg.svd(C)
    sgn = np.sign(np.linalg.det(U) * np.linalg.det(Vt))
    sgn = np.where(sgn == 0, 1.0, sgn)
    D = np.ones((len(C), 3))
    D[:, 2] = sgn
    R = np.einsum("bij,bj,bjk->bik", U, D, Vt)
    varX = (w[..., 0] * (X0**2).sum(-1)).sum(1) / wsum
    s = (d * D).sum(1) / np.maximum(varX, 1e-300)
    t = cY - s[:, None] * np.einsum("bij,bj->bi", R, cX)
    return s, R, t

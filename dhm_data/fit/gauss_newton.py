"""The joint Gauss-Newton step of the default method and the convergence
test.

One Levenberg-Marquardt-damped (Marquardt 1963) Gauss-Newton step on pose,
identity and expression together minimises the MAP cost of Blanz & Vetter
(2003, "Face recognition based on fitting a 3D morphable model"):
:func:`map_cost`.  The shape unknowns are eliminated by their Schur
complement, as in bundle adjustment (Triggs et al. 2000, "Bundle adjustment
-- a modern synthesis", section 6.1), written on the dual side through the
Woodbury / push-through identity so that ``K = 199`` identity components cost
a ``DN x DN`` solve.  Rotation updates are axis-angle (Rodrigues' formula).
The stop rule (:func:`converged_mask`) estimates the distance still to go
from the observed contraction rate (Kelley 1995, "Iterative methods for
linear and nonlinear equations", ch. 4).
"""

from __future__ import annotations

import numpy as np

from dhm_data.fit.linalg import solve_spd
from dhm_data.fit.model_rows import Prepared, gather_gram, project_coefficients, rotate_gram, shape_rows

#: the Levi-Civita symbol: (a x b)_i = eps_ijk a_j b_k
_EPS = np.zeros((3, 3, 3))
_EPS[0, 1, 2] = _EPS[1, 2, 0] = _EPS[2, 0, 1] = 1.0
_EPS[0, 2, 1] = _EPS[2, 1, 0] = _EPS[1, 0, 2] = -1.0
#: ``k @ _SKEW`` is the cross-product matrix ``[k]_x`` flattened: ``[k]_x[i, j] = -eps_ijl k_l``
_SKEW = -_EPS.transpose(2, 0, 1).reshape(3, 9)
#: the pose Jacobian's shape-dependent columns as one contraction with a
#: point ``S``: ``sum_j S_j G[j, q, k] r_k`` is ``(S x r)_q`` for ``q < 3``
#: and ``S . r`` for ``q = 3`` (``r`` a rotation row)
_POSE_GEN = np.concatenate([_EPS.transpose(1, 0, 2), np.eye(3)[:, None, :]], axis=1)
_POSE_GEN12 = _POSE_GEN.reshape(12, 3)  # (j, q) x k
_I3 = np.eye(3)

__all__ = ["rodrigues", "map_cost", "landmark_movement", "joint_gauss_newton_step", "converged_mask"]


def rodrigues(omega: np.ndarray) -> np.ndarray:
    """Rotation matrix ``exp([omega]_x)`` ``(B, 3, 3)`` of axis-angle vectors
    ``(B, 3)`` (Rodrigues' formula)."""
    th = np.sqrt((omega * omega).sum(1))
    k = omega / np.maximum(th, 1e-300)[:, None]
    Kx = (k @ _SKEW).reshape(-1, 3, 3)  # [k]_x
    st, ct = np.sin(th)[:, None, None], np.cos(th)[:, None, None]
    return _I3 + st * Kx + (1 - ct) * (Kx @ Kx)


def map_cost(prep: Prepared, rows, s, R, t, alpha, beta, obs, rw, lam_id, lam_exp, return_prediction=False):
    """The normalised MAP cost ``(B,)`` that every step decreases:
    ``sum rw |obs - (s Rp S + t)|^2 / (s F)^2 + lam_id |alpha/sigma|^2 +
    lam_exp |beta/tau|^2`` (shapes as :func:`joint_gauss_newton_step`).
    With ``return_prediction`` also the predicted points ``(B, N, D)``."""
    D = obs.shape[2]
    S = shape_rows(prep, rows, alpha, beta)
    pred = s[:, None, None] * (S @ R[:, :D].transpose(0, 2, 1)) + t[:, None, :D]
    res = np.where(rw > 0, obs - pred, 0.0)
    cost = ((rw * res * res).sum((1, 2)) / (s * prep.F) ** 2 + lam_id * (alpha**2 / prep.sigma2).sum(1)
            + lam_exp * (beta**2 / prep.tau2).sum(1))
    return (cost, pred) if return_prediction else cost


def landmark_movement(pred_a, pred_b, rw, s, F) -> np.ndarray:
    """RMS displacement ``(B,)`` of the predicted landmarks between two
    iterates over the observed points, in units of the face size ``s F``."""
    ok = (rw > 0).any(-1)
    d2 = np.where(ok, ((pred_a - pred_b) ** 2).sum(-1), 0.0).sum(1) / np.maximum(ok.sum(1), 1)
    return np.sqrt(d2) / (s * F)


def joint_gauss_newton_step(prep: Prepared, rows, s, R, t, alpha, beta, obs, rw, lam_id, lam_exp, damping):
    """One damped Gauss-Newton step on pose, identity and expression together.

    Linearise ``y_i = s Rp (mean_i + A_i alpha + B_i beta) + t`` in the
    rotation (``R <- R exp([w]_x)``, Rodrigues), the log-scale, the
    translation and -- exactly, it is linear -- the coefficients, and solve
    the regularised normal equations of :func:`map_cost` (Tikhonov prior,
    Blanz & Vetter 2003's MAP cost).  The ``K + E`` shape unknowns are
    eliminated through the Woodbury / push-through identity: the reduced
    pose system is ``Jq^T Kd^-1 Jq`` with ``Kd = Jc Lambda^-1 Jc^T + W^-1``
    (``DN x DN``, rotated from precomputed Gram blocks ``A diag(std^2) A^T``
    -- the Schur complement of the shape block, as in bundle adjustment, on
    the dual side), one batched solve with ``1 + n_pose`` right-hand sides;
    the coefficients follow as ``Lambda^-1 Jc^T z``.  The pose system gets
    Levenberg-Marquardt damping ``H + damping * diag(H)`` (Marquardt 1963).

    Shapes: ``rows`` ``(B, N)`` model rows, ``s`` ``(B,)``, ``R`` ``(B, 3, 3)``,
    ``t`` ``(B, 3)``, ``alpha`` ``(B, K)``, ``beta`` ``(B, E)``, ``obs``
    ``(B, N, D)`` posed-frame observations, ``rw`` ``(B, N, D)`` row weights,
    ``damping`` ``(B,)``.  Returns the proposed ``(s, R, t, alpha, beta)``.
    """
    ok = rw > 0
    dense = bool(ok.all())  # every row observed (the common case): no masking below
    if not dense:
        keep = ok.any(axis=(0, 2))
        if not keep.all():  # points no image of the batch observes (unmapped): out of the system
            rows, obs, rw, ok = rows[:, keep], obs[:, keep], rw[:, keep], ok[:, keep]
    B, N, D = obs.shape
    P = 4 + D
    shared = B == 1 or bool(np.all(rows == rows[:1]))
    r0 = rows[0]
    rset = prep.rowset(r0) if shared else None
    S = shape_rows(prep, rows, alpha, beta)
    Rp = R[:, :D]
    sF = s * prep.F
    # The system's rows are ordered coordinate-major, (d, n); column 0 is the
    # residual with zero coefficients r' = obs - t - s Rp mean, columns 1..P
    # the pose Jacobian: rotation (3), log-scale (1), translation (D).
    # d/dw of s Rp R exp([w]_x) S at w = 0 is -s Rp [S]_x, row d: s (S x Rp[d]);
    # d/dlog s is s Rp[d] . S.  Both are S times one (3, 4 D) matrix.
    RpT = Rp.transpose(0, 2, 1)
    Rmu = Rp @ (rset.mean.T if shared else prep.mean[rows].transpose(0, 2, 1))  # (B, D, N)
    J = np.empty((B, D, N, 1 + P))
    J[..., 0] = obs.transpose(0, 2, 1) - t[:, :D, None] - s[:, None, None] * Rmu
    JS = S @ (_POSE_GEN12 @ RpT).reshape(B, 3, 4 * D)  # (B, N, 4 * D), columns (q, d)
    J[..., 1:5] = s[:, None, None, None] * JS.reshape(B, N, 4, D).transpose(0, 3, 1, 2)
    J[..., 5:] = _I3[:D, None, :D]
    okT = ok.transpose(0, 2, 1)
    if not dense:
        J = np.where(okT[..., None], J, 0.0)
    rhs = J.reshape(B, D * N, 1 + P) / sF[:, None, None]
    # Kd / (sF)^2 = Rp (Q/lam_id + Qe/lam_exp) Rp^T / F^2 + diag(1 / rw)
    if shared:
        Qc = prep.shared_gram(r0, lam_id, lam_exp)
    else:
        Qc = gather_gram(prep.q9(lam_id, lam_exp), rows)
    Kd = rotate_gram(Qc, Rp / prep.F)
    wf = rw.transpose(0, 2, 1).reshape(B, D * N)
    if dense:
        Kd.reshape(B, -1)[:, :: D * N + 1] += 1.0 / wf
    else:
        okf = okT.reshape(B, D * N)
        Kd = np.where(okf[:, :, None] & okf[:, None, :], Kd, 0.0)
        Kd.reshape(B, -1)[:, :: D * N + 1] += np.where(okf, 1.0 / np.where(okf, wf, 1.0), 1.0)
    X = solve_spd(Kd, rhs)  # (B, ND, 1+P)
    # [r' Jq]^T Kd^-1 [r' Jq]: the reduced pose system H and gradient g in one product
    HG = rhs.transpose(0, 2, 1) @ X
    g = HG[:, 1:, 0]
    H = np.ascontiguousarray(HG[:, 1:, 1:])
    Hd = H.reshape(B, P * P)[:, :: P + 1]  # a view of the diagonal
    dH = Hd.copy()
    Hd += damping[:, None] * dH + 1e-12 * dH.max(1, keepdims=True) + 1e-300
    dq = solve_spd(H, g[..., None])[..., 0]
    z = (X[..., 0] - (X[..., 1:] @ dq[..., None])[..., 0]).reshape(B, D, N) / sF[:, None, None]
    v = s[:, None, None] * (z.transpose(0, 2, 1) @ Rp)  # (B, N, 3): Jc^T z = s [A B]^T Rp^T z
    if shared:
        vf = v.reshape(B, N * 3)
        alpha_new = (vf @ rset.At.T) * (prep.sigma2 / lam_id)
        beta_new = (vf @ rset.Bt.T) * (prep.tau2 / lam_exp)
    else:
        pa, pb = project_coefficients(prep, rows, v)
        alpha_new = pa * (prep.sigma2 / lam_id)
        beta_new = pb * (prep.tau2 / lam_exp)
    R_new = R @ rodrigues(dq[:, :3])
    s_new = s * np.exp(np.minimum(np.maximum(dq[:, 3], -1.0), 1.0))
    t_new = t.copy()
    t_new[:, :D] += dq[:, 4:]
    return s_new, R_new, t_new, alpha_new, beta_new


def converged_mask(movement: np.ndarray, movement_prev: np.ndarray, tolerance: float) -> np.ndarray:
    """Convergence test on the fitted landmarks (scale-free: in units of the
    face size).  With ``m_k`` the RMS movement of the predicted landmarks in
    this iteration and ``rho = m_k / m_{k-1}`` the observed contraction rate,
    the distance still to go is estimated as ``m_k rho / (1 - rho)`` (the a
    posteriori bound of a contracting fixed-point iteration, e.g. Kelley 1995,
    "Iterative methods for linear and nonlinear equations", ch. 4); converged
    when that is below ``tolerance``, or when ``m_k`` itself is negligible
    (``< tolerance / 100``).  Needs two iterations (``m_{k-1}`` finite).
    ``(B,)`` bool."""
    rho = np.divide(movement, movement_prev, out=np.full(movement.shape, np.nan),
                    where=(movement_prev > 0) & np.isfinite(movement_prev))
    rho = np.minimum(np.maximum(rho, 0.0), 0.999)  # NaN stays NaN
    ok = np.isfinite(movement_prev) & (movement * rho / (1.0 - rho) < tolerance)
    return ok | (movement < tolerance * 1e-2)

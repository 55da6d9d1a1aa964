"""The regularised linear solves of the alternating method (Blanz & Vetter
1999, "A morphable model for the synthesis of 3D faces"; eos
``fit_shape_to_landmarks_linear`` and its blendshape fit): identity with the
expression fixed, expression with the identity fixed, each the Tikhonov
(MAP, Gaussian prior) least-squares problem under a known camera.  The
identity solve has a primal (``K x K``) and a dual (``DN x DN``,
push-through identity) form; the smaller is used.

Shapes: ``rows`` ``(B, N)`` prepared model rows (:mod:`dhm_data.fit.model_rows`),
``Rp`` ``(B, D, 3)`` the observed rotation rows (``D`` = 2, or 3 with depth),
``resid`` / ``rw`` ``(B, N, D)`` target and row weights in model units.
"""

from __future__ import annotations

import numpy as np

from dhm_data.fit.model_rows import Prepared, gather_gram, project_coefficients, rotate_gram

__all__ = ["solve_identity_dual", "solve_primal", "solve_expression", "solve_identity"]


def solve_identity_dual(prep: Prepared, rows, Rp, resid, rw, lam) -> np.ndarray:
    """Tikhonov-regularised linear identity solve (Blanz & Vetter 1999;
    eos ``fit_shape_to_landmarks_linear``), in its dual (kernel) form.

    Minimises ``sum rw * (resid - Rp A alpha)^2 / F^2 + lam * sum (alpha/sigma)^2``
    where ``resid`` ``(B, N, D)`` is the target minus the part of the shape
    not being solved, in model units; ``Rp`` ``(B, D, 3)`` the rotation rows
    observed (D = 2 for 2D, 3 with depth), ``rw`` ``(B, N, D)`` the row
    weights.  The normal equations ``(At W A / F^2 + lam Sigma^-1) alpha =
    At W r / F^2`` are solved through the push-through identity
    ``alpha = Sigma At (A Sigma At + lam F^2 W^-1)^-1 r``: a ``DN x DN``
    system instead of ``K x K`` (136 instead of 199 for 2D), with
    ``A Sigma At`` rotated from a precomputed Gram block.  Rows of weight 0
    are decoupled (identity row, zero target), which is exactly their
    removal.  Returns ``alpha`` ``(B, K)``.
    """
    keep = (rw > 0).any(axis=(0, 2))
    if not keep.all():  # points no image of the batch observes: out of the system
        rows, resid, rw = rows[:, keep], resid[:, keep], rw[:, keep]
    B, N, D = resid.shape
    if np.all(rows == rows[:1]):
        Qr = prep.shared_gram(rows[0], 1.0, None)  # (9, N*N), shared by the batch
    else:  # landmark marching: each image has its own jaw vertices
        Qr = gather_gram(prep.q9(1.0, None), rows)  # (B,N,N,9)
    Kmat = rotate_gram(Qr, Rp)  # (B, N*D, N*D)
    wflat = rw.transpose(0, 2, 1).reshape(B, D * N)
    ok = wflat > 0
    r = np.where(ok, resid.transpose(0, 2, 1).reshape(B, D * N), 0.0)
    Kmat = np.where(ok[:, :, None] & ok[:, None, :], Kmat, 0.0)
    diag = np.where(ok, lam * prep.F**2 / np.where(ok, wflat, 1.0), 1.0)
    idx = np.arange(N * D)
    Kmat[:, idx, idx] += diag
    z = np.linalg.solve(Kmat, r[..., None])[..., 0].reshape(B, D, N).transpose(0, 2, 1)
    # alpha = Sigma * A^T Rp^T z  (gathered rows)
    v = np.einsum("bdc,bnd->bnc", Rp, z)  # (B,N,3)
    return project_coefficients(prep, rows, v)[0] * prep.sigma2


def solve_primal(basis_rows, Rp, resid, rw, prior_var, lam, F) -> np.ndarray:
    """Tikhonov-regularised linear coefficient solve, primal form (Blanz &
    Vetter 1999; eos ``fit_shape_to_landmarks_linear`` and its blendshape
    fit, which alternate identity and expression the same way).

    Minimises ``sum rw * (resid - Rp Bk c)^2 / F^2 + lam * sum c^2 / prior_var``
    through the ``C x C`` normal equations, batched.  ``basis_rows``
    ``(B, N, 3, C)`` (or ``(N, 3, C)`` shared), ``Rp`` ``(B, D, 3)``,
    ``resid``/``rw`` ``(B, N, D)``, ``prior_var`` ``(C,)``.  Returns ``(B, C)``.
    Used for expression, and for identity when ``C <= D N``.
    """
    B, N, D = resid.shape
    C = basis_rows.shape[-1]
    if C == 0:
        return np.zeros((B, 0))
    spec = "bdc,nce->bnde" if basis_rows.ndim == 3 else "bdc,bnce->bnde"  # shared or per-image rows
    Ab = np.einsum(spec, Rp, basis_rows).reshape(B, N * D, C)
    wflat = rw.reshape(B, N * D)
    r = np.where(wflat > 0, resid.reshape(B, N * D), 0.0)
    Aw = Ab * wflat[..., None]
    G = np.matmul(Aw.transpose(0, 2, 1), Ab) / F**2
    idx = np.arange(C)
    G[:, idx, idx] += lam / prior_var
    rhs = np.einsum("bme,bm->be", Aw, r) / F**2
    return np.linalg.solve(G, rhs[..., None])[..., 0]


def solve_expression(prep: Prepared, rows, Rp, resid, rw, lam) -> np.ndarray:
    """Expression step of the alternation: :func:`solve_primal` on the
    expression basis with the identity fixed (its contribution is already
    subtracted in ``resid``).  Returns ``beta`` ``(B, E)``."""
    basis = prep.Bx[rows[0]] if np.all(rows == rows[:1]) else prep.Bx[rows]
    return solve_primal(basis, Rp, resid, rw, prep.tau2, lam, prep.F)


def solve_identity(prep: Prepared, rows, Rp, resid, rw, lam) -> np.ndarray:
    """Identity step of the alternation (expression fixed): the dual form
    :func:`solve_identity_dual` when the model has more identity components
    than observed rows (``K > D N``, e.g. 199 against 136), else the primal
    :func:`solve_primal`; both give the same minimiser."""
    B, N, D = resid.shape
    if prep.A.shape[2] > N * D and lam > 0:
        return solve_identity_dual(prep, rows, Rp, resid, rw, lam)
    basis = prep.A[rows[0]] if np.all(rows == rows[:1]) else prep.A[rows]
    return solve_primal(basis, Rp, resid, rw, prep.sigma2, lam, prep.F)

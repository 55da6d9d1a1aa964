"""Batched solves of small symmetric positive definite systems, and the SVD
of small matrices.

The fit solves many small systems (``2N x 2N`` with ``N <= 68``, and the
``6 x 6`` / ``7 x 7`` damped pose systems).  ``np.linalg.solve`` is LU on a
batch; for one face per call its per-call overhead outweighs the arithmetic,
so a single system goes straight to LAPACK's Cholesky solver ``dposv``
(Anderson et al., "LAPACK Users' Guide", 3rd ed. 1999; through
``scipy.linalg.lapack``), which also does half the work of LU.  A matrix that
is not numerically positive definite falls back to LU.  Likewise a single
matrix's SVD goes straight to LAPACK's ``dgesdd`` (the routine
``np.linalg.svd`` calls for a batch).
"""

from __future__ import annotations

import numpy as np

__all__ = ["solve_spd", "svd"]


def solve_spd(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``x`` with ``A x = b`` for ``A`` ``(B, n, n)`` symmetric positive
    definite, ``b`` ``(B, n, r)``.  Returns ``(B, n, r)``."""
    if A.shape[0] == 1:
        # scipy.linalg costs 0.3 s to import: only a fit pays it, not every build process that imports dhm_data.fit
        from scipy.linalg import lapack

        _, x, info = lapack.dposv(A[0], b[0], lower=1)
        if info == 0:
            return x[None]
    return np.linalg.solve(A, b)


def svd(A: np.ndarray):
    """Thin SVD ``U, d, Vt`` of ``A`` ``(B, m, n)``: ``U`` ``(B, m, k)``,
    ``d`` ``(B, k)``, ``Vt`` ``(B, k, n)`` with ``k = min(m, n)``."""
    if A.shape[0] == 1:
        # scipy.linalg costs 0.3 s to import: only a fit pays it, not every build process that imports dhm_data.fit
        from scipy.linalg import lapack

        u, d, vt, info = lapack.dgesdd(A[0], full_matrices=0)
        if info == 0:
            return u[None], d[None], vt[None]
    return np.linalg.svd(A, full_matrices=False)

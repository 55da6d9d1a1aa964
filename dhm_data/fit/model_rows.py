"""The model rows a fit needs, prepared once per model: the landmark
vertices and contour candidates of the model gathered into ``M`` rows, the
face size ``F``, the prior Gram blocks ``A diag(sigma^2) A^T`` and
``B diag(tau^2) B^T`` of the dual (kernel) solves, and the shape evaluation
over those rows (one GEMM per basis).

Shapes: ``M`` prepared rows, ``K`` identity and ``E`` expression components;
``rows`` ``(B, N)`` index prepared rows (per image: marched jaw vertices
differ between images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from dhm_data.errors import FittingError
from dhm_data.fit.camera_estimation import face_size
from dhm_data.models.morphable import MorphableModel

__all__ = ["Prepared", "RowSet", "prepare", "prepare_cached", "landmark_mask", "shape_all", "shape_rows", "project_coefficients",
           "rotate_gram", "gather_gram"]


@dataclass(frozen=True)
class RowSet:
    """Model rows gathered once: ``mean`` ``(N, 3)``, ``A`` ``(N, 3, K)``,
    ``Bx`` ``(N, 3, E)`` and the flattened transposes ``At`` ``(K, 3N)``,
    ``Bt`` ``(E, 3N)`` for ``alpha @ At``."""

    mean: np.ndarray
    A: np.ndarray
    Bx: np.ndarray
    At: np.ndarray
    Bt: np.ndarray


@dataclass
class Prepared:
    """Model rows the fit needs (landmark vertices and contour candidates),
    the face size ``F`` and the identity prior Gram blocks for the dual solve."""

    vertices: np.ndarray  # (M,) full-model vertex of each row
    mean: np.ndarray  # (M,3)
    A: np.ndarray  # (M,3,K)
    Bx: np.ndarray  # (M,3,E)
    sigma2: np.ndarray  # (K,)
    tau2: np.ndarray  # (E,)
    F: float
    base_rows: np.ndarray  # (68,) row of each landmark's default vertex, -1 unmapped
    mapped: np.ndarray  # (68,) bool: the model has a fixed vertex for the landmark
    contour_rows: list | None  # 17 arrays of rows, or None
    Q: np.ndarray  # (M,3,M,3) A diag(sigma^2) A^T
    Qe: np.ndarray  # (M,3,M,3) B diag(tau^2) B^T
    contour_shared: np.ndarray = None  # (17,) bool: the line is shared with another landmark
    _q9: dict = field(default_factory=dict)

    def without_contour(self) -> "Prepared":
        """The same rows with marching switched off (jaw at fixed vertices);
        shares this object's caches."""
        hit = self._q9.get("without_contour")
        if hit is None:
            hit = self._q9["without_contour"] = replace(self, contour_rows=None)
        return hit

    def rowset(self, r0: np.ndarray) -> "RowSet":
        """The mean and bases gathered at rows ``r0`` ``(N,)`` (cached per row
        set: every step of a fit evaluates the same rows)."""
        key = ("rows", r0.tobytes())
        hit = self._q9.get(key)
        if hit is None:
            N = len(r0)
            A, Bx = self.A[r0], self.Bx[r0]
            hit = RowSet(self.mean[r0], A, Bx, np.ascontiguousarray(A.reshape(N * 3, -1).T),
                         np.ascontiguousarray(Bx.reshape(N * 3, -1).T))
            if len(self._q9) > 256:
                self._q9.clear()
            self._q9[key] = hit
        return hit

    def shared_gram(self, r0: np.ndarray, lam_id: float, lam_exp: float | None) -> np.ndarray:
        """``(Q / lam_id + Qe / lam_exp)`` at rows ``r0`` ``(N,)`` as the
        ``(9, N * N)`` blocks :func:`rotate_gram` takes (cached per row set
        and weights: a fit revisits the same rows every step); ``lam_exp``
        ``None`` = identity only."""
        key = (r0.tobytes(), lam_id, lam_exp)
        hit = self._q9.get(key)
        if hit is None:
            Qc = self.Q[r0][:, :, r0] / lam_id
            if lam_exp is not None:
                Qc = Qc + self.Qe[r0][:, :, r0] / lam_exp
            N = len(r0)
            hit = np.ascontiguousarray(Qc.transpose(1, 3, 0, 2).reshape(9, N * N))
            if len(self._q9) > 256:
                self._q9.clear()
            self._q9[key] = hit
        return hit

    def q9(self, lam_id: float, lam_exp: float | None) -> np.ndarray:
        """``(Q / lam_id + Qe / lam_exp)`` as ``(M, M, 9)`` (cached); ``lam_exp``
        ``None`` = identity only."""
        key = (lam_id, lam_exp)
        if key not in self._q9:
            Qc = self.Q / lam_id + (self.Qe / lam_exp if lam_exp is not None else 0.0)
            M = Qc.shape[0]
            self._q9[key] = np.ascontiguousarray(Qc.transpose(0, 2, 1, 3).reshape(M, M, 9))
        return self._q9[key]


def prepare(model: MorphableModel) -> Prepared:
    li = np.asarray(model.landmark_indices)
    mapped = li >= 0
    verts = list(li[mapped])
    contour = None
    if model.contour_candidates is not None:
        contour = []
        for j, line in enumerate(model.contour_candidates):
            line = np.asarray(line, dtype=np.int64).ravel()
            if line.size == 0 or np.any((line < 0) | (line >= model.n_vertices)):
                raise FittingError(f"model {model.name!r}: contour_candidates[{j}] is empty or indexes outside [0, {model.n_vertices})")
            verts.extend(line.tolist())
    vertices = np.unique(np.asarray(verts, np.int64))
    pos = {int(v): r for r, v in enumerate(vertices)}
    base_rows = np.array([pos[int(v)] if v >= 0 else -1 for v in li], np.int64)
    if contour is not None:
        contour = [np.array([pos[int(v)] for v in np.asarray(line).ravel()], np.int64) for line in model.contour_candidates]
        # a jaw landmark without a fixed vertex (e.g. eos's SFM mapping) starts on its line
        for j in range(17):
            if base_rows[j] < 0:
                base_rows[j] = contour[j][0]
    mean = np.asarray(model.mean[vertices], np.float64)
    A = np.asarray(model.identity_basis[vertices], np.float64)
    Bx = np.asarray(model.expression_basis[vertices], np.float64)
    for what, arr in (("mean", mean), ("identity_basis", A), ("expression_basis", Bx)):
        if not np.all(np.isfinite(arr)):
            raise FittingError(f"model {model.name!r}: {what} has non-finite values at a mapped landmark vertex")
    sigma2 = np.asarray(model.identity_std, np.float64) ** 2
    tau2 = np.asarray(model.expression_std, np.float64) ** 2
    if np.any(sigma2 <= 0) or np.any(tau2 <= 0):
        raise FittingError(f"model {model.name!r}: identity_std / expression_std must be > 0 (they define the prior)")
    lm_mean = mean[base_rows[mapped]]
    F = float(face_size(lm_mean[None], np.ones((1, len(lm_mean))))[0])
    Q = np.einsum("ick,k,jdk->icjd", A, sigma2, A, optimize=True)
    Qe = np.einsum("ick,k,jdk->icjd", Bx, tau2, Bx, optimize=True)
    shared = np.zeros(17, bool)
    if contour is not None:
        for j in range(17):
            shared[j] = any(i != j and len(contour[i]) == len(contour[j]) and np.array_equal(contour[i], contour[j])
                            for i in range(17))
    return Prepared(vertices, mean, A, Bx, sigma2, tau2, F, base_rows, mapped, contour, Q, Qe, shared)


def landmark_mask(prep: Prepared, marching: bool) -> np.ndarray:
    """``(68,)`` landmarks the fit can use: the fixed-vertex ones, plus with
    marching every jaw landmark that has a contour line."""
    m = prep.mapped.copy()
    if marching and prep.contour_rows is not None:
        m[:17] = True
    return m


_PREP_CACHE: dict = {}


def prepare_cached(model: MorphableModel) -> Prepared:
    """:func:`prepare`, cached per model object (models are frozen)."""
    key = id(model)
    hit = _PREP_CACHE.get(key)
    if hit is not None and hit[0] is model:
        return hit[1]
    prep = prepare(model)
    if len(_PREP_CACHE) > 8:
        _PREP_CACHE.clear()
    _PREP_CACHE[key] = (model, prep)
    return prep


def shape_all(prep, alpha, beta):
    """All prepared model rows ``(B, M, 3)`` (landmarks and contour
    candidates) for coefficients ``(B, K)``, ``(B, E)``: one GEMM each."""
    M, K = prep.A.shape[0], prep.A.shape[2]
    S = alpha @ prep.A.reshape(M * 3, K).T
    if prep.Bx.shape[2]:
        S = S + beta @ prep.Bx.reshape(M * 3, -1).T
    return prep.mean[None] + S.reshape(-1, M, 3)


def shape_rows(prep, rows, alpha, beta):
    """Model landmarks ``(B, N, 3)`` at model rows ``rows`` ``(B, N)`` (one
    GEMM on the shared rows, or on all rows then a gather with marching)."""
    B, N = rows.shape
    if B == 1 or np.all(rows == rows[:1]):
        rs = prep.rowset(rows[0])
        S = alpha @ rs.At
        if rs.Bt.shape[0]:
            S += beta @ rs.Bt
        return rs.mean[None] + S.reshape(B, N, 3)
    return np.take_along_axis(shape_all(prep, alpha, beta), rows[:, :, None], axis=1)


def project_coefficients(prep, rows, v):
    """``sum_n basis[rows[b, n]]^T v[b, n]`` for identity and expression:
    ``v`` ``(B, N, 3)`` scattered into all prepared rows, then one GEMM.
    Returns ``(B, K)``, ``(B, E)``."""
    B, N = rows.shape
    M = prep.A.shape[0]
    V = np.zeros((B, M, 3))
    np.add.at(V, (np.arange(B)[:, None], rows), v)
    Vf = V.reshape(B, M * 3)
    return Vf @ prep.A.reshape(M * 3, -1), Vf @ prep.Bx.reshape(M * 3, -1)


def rotate_gram(Qr, Rp):
    """``K[b, (a, i), (e, j)] = sum_cd Rp[b,a,c] Qr[(b),i,c,j,d] Rp[b,e,d]``
    (rows ordered coordinate-major: all x rows, then all y rows, ...).
    ``Qr`` is ``(9, N*N)`` shared by the batch (:meth:`Prepared.shared_gram`;
    one GEMM over the nine ``(c, d)`` blocks for all ``D * D`` (a, e) blocks
    of every image, then one transposing copy) or ``(B,N,N,9)`` gathered per
    image.  Returns ``(B, D*N, D*N)``."""
    B, D = Rp.shape[:2]
    C = (Rp[:, :, None, :, None] * Rp[:, None, :, None, :]).reshape(B, D, D, 9)  # Rp[a,c] Rp[e,d]
    if Qr.ndim == 2:
        N = math.isqrt(Qr.shape[1])
        K = (C.reshape(B * D * D, 9) @ Qr).reshape(B, D, D, N, N).transpose(0, 1, 3, 2, 4)
        return K.reshape(B, D * N, D * N)
    N = Qr.shape[1]
    K = np.empty((B, D, N, D, N))
    for a in range(D):
        for e in range(D):
            K[:, a, :, e, :] = np.einsum("bijk,bk->bij", Qr, C[:, a, e])
    return K.reshape(B, D * N, D * N)


def gather_gram(Q9, rows):
    """Per-image Gram blocks ``(B, N, N, 9)`` from ``Q9`` ``(M, M, 9)``."""
    return Q9[rows[:, :, None], rows[:, None, :]]

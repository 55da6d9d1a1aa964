"""Batched 3DMM fitting: pose, identity and expression from 68 landmarks.

Pure numpy, no files.  One function per fitting step; each docstring names the
algorithm it implements.  The entry point is :func:`fit`.

Problem (per image ``b``)::

    minimise over s, R, t, alpha, beta
        sum_i w_i || x_i - P(s R S_i(alpha, beta) + t) ||^2 / (s F)^2
        + lam_id  * sum_k (alpha_k / sigma_k)^2
        + lam_exp * sum_e (beta_e  / tau_e )^2

* ``x_i`` are the observed landmarks moved into the *posed model frame* with
  :func:`dhm_data.geometry.camera.image_to_model_frame` (x right, y up, 1-based
  origin), i.e. the frame in which ``Pose_Para`` acts: ``s R S + t``.
  ``P`` keeps x, y (2D fit) or x, y, z (with 3D landmark estimates).
* ``S_i = mean_i + A_i alpha + B_i beta`` is landmark ``i`` of the model
  (:class:`~dhm_data.models.morphable.MorphableModel`, its own units).
* ``F`` is the *face size* of the model: the RMS distance of the mean
  shape's mapped landmarks from their centroid (model units).  ``s F`` is
  therefore the face size in pixels, and dividing the data term by it makes
  the cost dimensionless: one regularisation weight works at any image
  scale (a face 100 px or 1000 px wide gives the same coefficients).
* ``sigma`` / ``tau`` are the model's ``identity_std`` / ``expression_std``
  (Tikhonov prior of Blanz & Vetter 1999 / eos).
* ``w_i`` is 0 for a missing landmark (NaN in the input, or ``-1`` in the
  model's ``landmark_indices``): missing points are masked, never invented.

Steps.  Initialisation: pose from the model's mean shape
(:func:`estimate_affine_camera`, Hartley-normalised least squares, H&Z Alg.
7.2, then :func:`affine_to_similarity`, SVD projection to scale + rotation;
or :func:`umeyama_similarity` with 3D estimates).  Then, per iteration, one of

* ``method="gauss-newton"`` (default): landmark marching of the jaw
  (:func:`march_contour`), then one joint, Levenberg-damped Gauss-Newton step
  on pose, identity and expression (:func:`joint_gauss_newton_step`): the
  regularised linear identity / expression solve is done exactly inside the
  step (dual / push-through form, so ``K = 199`` costs a ``2N x 2N`` solve),
  with the pose eliminated by its Schur complement;
* ``method="alternating"`` (eos ``fit_shape_and_pose``, Blanz & Vetter
  2003): pose again by affine camera + SVD, marching, then identity with
  expression fixed and expression with identity fixed
  (:func:`solve_identity` -- dual or primal Tikhonov solve -- and
  :func:`solve_expression`).

Both minimise the same cost; the alternation crawls along the pose / shape
valley (10 iterations leave 3-5x the noise-free error of 2-3 Gauss-Newton
steps), which is why it is not the default.  Stop when the fitted landmarks
have, by the observed contraction rate, settled to within ``tolerance`` of
the face size (:func:`converged_mask`).  All steps work on a batch of ``B``
images at once (einsum, GEMMs and batched ``np.linalg.solve``), without a
Python loop over faces.

Jaw contour: the 17 jaw landmarks of 300W-LP / AFLW2000-3D / LS3D-W follow
the visible silhouette.  With a model that has ``contour_candidates`` (17 lines
of vertices) each jaw landmark marches to the silhouette vertex of its line
(3DDFA, Zhu et al. 2016).  Without them (the 68-row BFM subset, the compact
landmark model) the fallback is the model's fixed jaw vertices, down-weighted
by ``jaw_weight`` and, on the side turning away from the camera, further by
``cos(yaw)`` (the fixed vertex drifts off the silhouette as the cheek turns
away); the inner 51 points, which are exact, dominate.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np

from dhm_data.errors import FittingError
from dhm_data.geometry import camera
from dhm_data.models.morphable import N_LANDMARKS, MorphableModel

__all__ = [
    "FitConfig",
    "FitResult",
    "FittingError",
    "fit",
    "face_size",
    "landmark_nme",
    "hartley_normalisation",
    "estimate_affine_camera",
    "affine_to_similarity",
    "umeyama_similarity",
    "march_contour",
    "solve_identity",
    "solve_identity_dual",
    "solve_expression",
    "solve_primal",
    "converged_mask",
    "joint_gauss_newton_step",
    "map_cost",
    "landmark_movement",
    "rodrigues",
    "posed_model_landmarks",
]

#: iBUG 68 indices of the jaw line; 0..7 are on the image-left side of a
#: frontal face (the person's right), 9..16 on the image-right, 8 the chin.
JAW_INDICES = np.arange(17)


@dataclass(frozen=True)
class FitConfig:
    """Fitting parameters (all dimensionless unless stated).

    Attributes:
        max_iterations: alternations pose -> identity -> expression at most.
        tolerance: converged when the estimated remaining movement of the
            fitted landmarks is below ``tolerance`` times the face size
            (:func:`converged_mask`; 3e-3 is ~0.2 px for a face of 75 px RMS
            radius, far below label noise).  Gauss-Newton typically stops
            after 2-3 steps; the fit after 10 steps differs by < 0.001% NME
            (benchmarks/fit_synthetic.py).
        regularisation: Tikhonov weight of the identity prior
            ``sum (alpha / sigma)^2`` against the face-size-normalised data
            term.  Roughly the squared relative landmark noise one expects
            (1e-3 ~ 3% of the face's RMS radius).
        expression_regularisation: the same for expression; ``None`` = same
            as ``regularisation``.
        jaw_weight: weight of the 17 jaw landmarks when the model has no
            contour candidates (fallback, see module docstring); 1 = no
            down-weighting.
        far_jaw_cos_yaw: in the fallback, also multiply the weight of the jaw
            points on the side turning away from the camera by ``cos(yaw)``.
        depth_weight: weight of the z residual relative to x, y when 3D
            landmark estimates are given.
        min_points: an image with fewer valid landmarks is not fitted (NaN
            parameters, ``converged = False``).
        max_residual: NME (mean 2D error / sqrt(w h) of the observed landmark
            box) above which a fit is flagged, even if it converged.
        batch_size: images solved together (bounds memory: about
            ``batch_size * 40 kB`` per D^2 N^2 block).
        jaw: ``"silhouette"`` (default; the issue's convention: jaw labels
            follow the visible outline, as 300W-LP ``pt2d`` and 300-W): landmark
            marching when the model has contour candidates, else the
            down-weighted fallback above.  ``"fixed"``: the jaw labels are
            projections of fixed 3D vertices (AFLW2000-3D ``pt3d_68``,
            300W-LP ``pts_3d``, LS3D-W): fixed vertices at full weight, no
            marching.
        march_iterations: landmark marching re-selects the jaw vertices in
            the first iterations only, then the correspondences are frozen
            so the convergence test compares costs of one fixed problem
            (the silhouette vertex jumps between discrete candidates).
        method: ``"gauss-newton"`` (default): after the affine-camera
            initialisation, each iteration is one joint Gauss-Newton step on
            pose, identity and expression (:func:`joint_gauss_newton_step`);
            ``"alternating"``: the eos scheme, each iteration re-estimates the
            pose (affine camera + SVD) and then solves identity and expression
            alternately (:func:`solve_identity`, :func:`solve_expression`).
            Both minimise the same cost; the joint step converges in a few
            iterations where the alternation crawls along the pose/shape
            valley (benchmarks/fit_synthetic.py prints both).
    """

    max_iterations: int = 10
    tolerance: float = 3e-3
    regularisation: float = 1e-3
    expression_regularisation: float | None = None
    jaw_weight: float = 0.5
    far_jaw_cos_yaw: bool = True
    depth_weight: float = 1.0
    min_points: int = 6
    max_residual: float = 0.05
    batch_size: int = 128
    march_iterations: int = 3
    method: str = "gauss-newton"
    jaw: str = "silhouette"

    def __post_init__(self):
        if self.jaw not in ("silhouette", "fixed"):
            raise FittingError(f"FitConfig.jaw must be 'silhouette' or 'fixed', got {self.jaw!r}")
        if self.method not in ("gauss-newton", "alternating"):
            raise FittingError(f"FitConfig.method must be 'gauss-newton' or 'alternating', got {self.method!r}")
        if self.max_iterations < 1:
            raise FittingError(f"FitConfig.max_iterations must be >= 1, got {self.max_iterations}")
        for name in ("tolerance", "regularisation", "jaw_weight", "depth_weight", "max_residual"):
            if not getattr(self, name) >= 0:
                raise FittingError(f"FitConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.expression_regularisation is not None and not self.expression_regularisation >= 0:
            raise FittingError(f"FitConfig.expression_regularisation must be >= 0 or None, got {self.expression_regularisation}")
        if self.method == "gauss-newton" and not (self.regularisation > 0 and self.lam_exp > 0):
            raise FittingError("FitConfig: the Gauss-Newton method needs regularisation > 0 (the prior makes the shape block invertible)")
        if self.min_points < 4:
            raise FittingError(f"FitConfig.min_points must be >= 4 (an affine camera has 8 unknowns), got {self.min_points}")
        if self.batch_size < 1:
            raise FittingError(f"FitConfig.batch_size must be >= 1, got {self.batch_size}")

    @classmethod
    def from_mapping(cls, options, origin: str = "[fit]") -> "FitConfig":
        """A config from a mapping of option names to values (a pipeline's
        ``[fit]`` table, a fit file's recorded settings): unknown names and
        values of the wrong type raise :class:`FittingError` naming
        ``origin``, the option, what was expected and what was found; the
        value checks of ``__post_init__`` follow.  The one place that checks
        ``[fit]`` options."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise FittingError(f"{origin}: unknown fitting options {unknown}; known: {', '.join(known)}")
        kw = {}
        for name, value in options.items():
            default = getattr(cls, name)
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif isinstance(default, float) or default is None:
                ok = value is None and default is None or isinstance(value, (int, float)) and not isinstance(value, bool)
                value = float(value) if ok and value is not None else value
            else:
                ok = isinstance(value, type(default))
            if not ok:
                want = "a number or none" if default is None else type(default).__name__
                raise FittingError(f"{origin}: fitting option {name!r} must be {want}, got {value!r}")
            kw[name] = value
        try:
            return cls(**kw)
        except FittingError as e:
            raise FittingError(f"{origin}: {e}") from None

    @property
    def lam_exp(self) -> float:
        return self.regularisation if self.expression_regularisation is None else self.expression_regularisation

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class FitResult:
    """Output of :func:`fit` for ``B`` images.

    Attributes:
        pose_para: ``(B, 7)`` ``Pose_Para = [pitch, yaw, roll, tx, ty, tz, s]``
            (radians; 300W-LP convention, see :mod:`dhm_data.geometry.camera`) such that
            ``camera.model_to_image(model.reconstruct(shape_para, exp_para)
            [landmark vertices], pose_para, image_height)`` reproduces the
            landmarks.  From 2D alone the depth offset is unobservable and
            ``tz = 0``.
        shape_para: ``(B, K)`` identity coefficients, the model's units.
        exp_para: ``(B, E)`` expression coefficients, the model's units.
        residual: ``(B,)`` NME of the fit: mean 2D distance between observed
            and fitted landmarks over the valid points, divided by
            ``sqrt(w h)`` of the observed landmarks' box.
        residual_px: ``(B,)`` the same mean distance in pixels.
        iterations: ``(B,)`` alternations used.
        converged: ``(B,)`` bool, the convergence test passed.
        n_points: ``(B,)`` valid landmarks used.
        landmarks: ``(B, 68, 3)`` fitted landmarks in 0-based image pixels
            (x, y; z the posed depth), NaN where the model has no vertex.
        landmark_vertices: ``(B, 68)`` model vertex used for each landmark
            after landmark marching (-1 = unmapped).
        max_residual: the flagging limit the fit used.
        config: the :class:`FitConfig` as a dict.
        image_height: ``(B,)`` the heights the pose refers to.
    """

    pose_para: np.ndarray
    shape_para: np.ndarray
    exp_para: np.ndarray
    residual: np.ndarray
    residual_px: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    n_points: np.ndarray
    landmarks: np.ndarray
    landmark_vertices: np.ndarray
    max_residual: float = 0.05
    config: dict = field(default_factory=dict)
    image_height: np.ndarray | None = None

    def __len__(self) -> int:
        return self.pose_para.shape[0]

    @property
    def flagged(self) -> np.ndarray:
        """``(B,)`` bool: did not converge, residual over ``max_residual``, or not fitted."""
        r = self.residual
        return ~self.converged | ~np.isfinite(r) | (r > self.max_residual)

    @property
    def yaw_degrees(self) -> np.ndarray:
        return camera.yaw_degrees(self.pose_para)

    def arrays(self) -> dict:
        """The per-image arrays by name (what :mod:`dhm_data.fit.result_file` writes)."""
        skip = ("image_height",)
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), np.ndarray) and f.name not in skip}


# ---------------------------------------------------------------- helpers
def face_size(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted RMS distance of points from their weighted centroid.

    ``points`` ``(..., N, D)``, ``weights`` ``(..., N)`` (0 = ignore; NaN
    points must have weight 0).  Returns ``(...)``.  This is the scale used by
    Hartley normalisation and the face-size normalisation of the data term.
    """
    w = weights[..., None]
    P = np.where(w > 0, points, 0.0)
    wsum = np.maximum(weights.sum(-1), 1e-300)
    c = (w * P).sum(-2) / wsum[..., None]
    d2 = (weights * ((P - c[..., None, :]) ** 2).sum(-1)).sum(-1) / wsum
    return np.sqrt(d2)


def landmark_nme(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """NME per image (CONVENTIONS.md section 6): mean 2D point error over the
    points finite in both, divided by ``sqrt(w h)`` of the box of the finite
    ground-truth points.  ``pred``, ``gt`` ``(..., 68, >=2)`` pixels; returns ``(...)``."""
    pred = np.asarray(pred, np.float64)[..., :2]
    gt = np.asarray(gt, np.float64)[..., :2]
    ok = np.isfinite(pred).all(-1) & np.isfinite(gt).all(-1)
    err = np.where(ok, np.linalg.norm(np.where(ok[..., None], pred - gt, 0.0), axis=-1), 0.0)
    n = ok.sum(-1)
    g = np.where(ok[..., None], gt, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        wh = (np.nanmax(g, -2) - np.nanmin(g, -2)).prod(-1)
        return err.sum(-1) / n / np.sqrt(wh)


def hartley_normalisation(points: np.ndarray, weights: np.ndarray):
    """Isotropic normalisation of Hartley (1997), H&Z section 4.4.4.

    Translate the (weighted) centroid to the origin and scale so the RMS
    distance from it is ``sqrt(D)``.  ``points`` ``(B, N, D)``, ``weights``
    ``(B, N)``.  Returns ``(normalised points (B, N, D), centroid (B, D),
    scale (B,))`` with ``normalised = (points - centroid) * scale``.
    """
    D = points.shape[-1]
    w = weights[..., None]
    P = np.where(w > 0, points, 0.0)
    c = (w * P).sum(1) / np.maximum(weights.sum(1), 1e-300)[:, None]
    rms = face_size(points, weights)
    scale = np.sqrt(D) / np.maximum(rms, 1e-300)
    return (P - c[:, None, :]) * scale[:, None, None], c, scale


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
    Xh = np.concatenate([Xn, np.ones(Xn.shape[:2] + (1,))], axis=-1)  # (B,N,4)
    wX = Xh * weights[..., None]
    G = np.einsum("bni,bnj->bij", wX, Xh)  # (B,4,4)
    G += 1e-12 * np.eye(4)
    rhs = np.einsum("bni,bnk->bik", wX, xn)  # (B,4,2)
    Pn = np.linalg.solve(G, rhs).transpose(0, 2, 1)  # (B,2,4)
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
    U, d, Vt = np.linalg.svd(affine[:, :, :3], full_matrices=False)  # U (B,2,2), Vt (B,2,3)
    R2 = U @ Vt
    r3 = np.cross(R2[:, 0], R2[:, 1])
    R = np.concatenate([R2, r3[:, None, :]], axis=1)
    s, t = _optimal_scale_translation(R2, image_points, model_points, weights)
    return s, R, t


def _optimal_scale_translation(Rp, obs, X, weights):
    """Least-squares ``s`` and ``t`` of ``obs ~ s Rp X + t`` for a fixed
    rotation part ``Rp`` ``(B, D, 3)``; ``obs`` ``(B, N, D)``."""
    w = weights[..., None]
    wsum = np.maximum(weights.sum(1), 1e-300)[:, None]
    obs0 = np.where(w > 0, obs, 0.0)
    X0 = np.where(w > 0, X, 0.0)
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


# ------------------------------------------------------------ precomputation
@dataclass
class _Prepared:
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

    def q9(self, lam_id: float, lam_exp: float | None) -> np.ndarray:
        """``(Q / lam_id + Qe / lam_exp)`` as ``(M, M, 9)`` (cached); ``lam_exp``
        ``None`` = identity only."""
        key = (lam_id, lam_exp)
        if key not in self._q9:
            Qc = self.Q / lam_id + (self.Qe / lam_exp if lam_exp is not None else 0.0)
            M = Qc.shape[0]
            self._q9[key] = np.ascontiguousarray(Qc.transpose(0, 2, 1, 3).reshape(M, M, 9))
        return self._q9[key]


def _prepare(model: MorphableModel) -> _Prepared:
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
    return _Prepared(vertices, mean, A, Bx, sigma2, tau2, F, base_rows, mapped, contour, Q, Qe, shared)


def _landmark_mask(prep: _Prepared, marching: bool) -> np.ndarray:
    """``(68,)`` landmarks the fit can use: the fixed-vertex ones, plus with
    marching every jaw landmark that has a contour line."""
    m = prep.mapped.copy()
    if marching and prep.contour_rows is not None:
        m[:17] = True
    return m


_PREP_CACHE: dict = {}


def _prepare_cached(model: MorphableModel) -> _Prepared:
    """:func:`_prepare`, cached per model object (models are frozen)."""
    key = id(model)
    hit = _PREP_CACHE.get(key)
    if hit is not None and hit[0] is model:
        return hit[1]
    prep = _prepare(model)
    if len(_PREP_CACHE) > 8:
        _PREP_CACHE.clear()
    _PREP_CACHE[key] = (model, prep)
    return prep


# ------------------------------------------------------------ solver steps
def march_contour(prep: _Prepared, rows: np.ndarray, R: np.ndarray, alpha: np.ndarray, beta: np.ndarray,
                  s=None, t=None, obs=None, valid=None) -> np.ndarray:
    """Landmark marching (Zhu et al. 2016, "Face alignment across large
    poses: a 3D solution", section 4.1; also 3DDFA's 300W-LP synthesis).

    Each of the 17 jaw landmarks slides along its candidate line to the
    vertex on the silhouette for the current pose.  A line of its own (a
    parallel of the mesh, 3DDFA's construction) gives the extreme vertex: the
    smallest posed x for lines 0..7 (image-left), the largest for 9..16, the
    lowest (smallest posed y) for the chin line 8.  A list shared by several
    landmarks (eos's SFM contour: one list per face side) is matched instead
    to each observed landmark by the nearest projected vertex, as eos's
    ``get_nearest_contour_correspondences`` does -- this needs the camera
    ``s`` ``(B,)``, ``t`` ``(B, 3)`` and the observations ``obs`` ``(B, 68,
    >=2)`` (posed frame) with ``valid`` ``(B, 68)``; without them, or for a
    missing observation, the extreme rule applies.

    ``rows`` ``(B, 68)`` is updated in place and returned; ``R`` ``(B, 3, 3)``;
    the shape uses ``alpha`` / ``beta``.
    """
    if prep.contour_rows is None:
        return rows
    S_all = _shape_all(prep, alpha, beta)
    for j, line in enumerate(prep.contour_rows):
        posed = np.einsum("bdc,blc->bld", R[:, :2], S_all[:, line])  # (B,L,2) x, y (up), model units
        if j < 8:
            k = np.argmin(posed[..., 0], axis=1)
        elif j > 8:
            k = np.argmax(posed[..., 0], axis=1)
        else:
            k = np.argmin(posed[..., 1], axis=1)
        if prep.contour_shared[j] and obs is not None:
            img = s[:, None, None] * posed + t[:, None, :2]
            k_near = np.argmin(((img - obs[:, j, None, :2]) ** 2).sum(-1), axis=1)
            k = np.where(valid[:, j], k_near, k)
        rows[:, j] = line[k]
    return rows


def solve_identity_dual(prep: _Prepared, rows, Rp, resid, rw, lam) -> np.ndarray:
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
        Qr = prep.Q[rows[0]][:, :, rows[0]]  # (N,3,N,3), shared by the batch
    else:  # landmark marching: each image has its own jaw vertices
        Qr = _gather_gram(prep.q9(1.0, None), rows)  # (B,N,N,9)
    Kmat = _rotate_gram(Qr, Rp)  # (B, N*D, N*D)
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
    return _project_coefficients(prep, rows, v)[0] * prep.sigma2


def _rotate_gram(Qr, Rp):
    """``K[b, (a, i), (e, j)] = sum_cd Rp[b,a,c] Qr[(b),i,c,j,d] Rp[b,e,d]``
    (rows ordered coordinate-major: all x rows, then all y rows, ...).
    ``Qr`` is ``(N,3,N,3)`` shared by the batch (one GEMM over the nine
    ``(c, d)`` blocks per (a, e) block) or ``(B,N,N,9)`` gathered per image.
    Each block is written straight into its place.  Returns ``(B, D*N, D*N)``."""
    B, D = Rp.shape[:2]
    C = np.einsum("bac,bed->baecd", Rp, Rp).reshape(B, D, D, 9)
    shared = Qr.ndim == 4 and Qr.shape[1] == 3
    N = Qr.shape[0] if shared else Qr.shape[1]
    K = np.empty((B, D, N, D, N))
    if shared:
        Q9 = Qr.transpose(1, 3, 0, 2).reshape(9, N * N)
        for a in range(D):
            for e in range(D):
                K[:, a, :, e, :] = (C[:, a, e] @ Q9).reshape(B, N, N)
    else:
        for a in range(D):
            for e in range(D):
                K[:, a, :, e, :] = np.einsum("bijk,bk->bij", Qr, C[:, a, e])
    return K.reshape(B, D * N, D * N)


def _gather_gram(Q9, rows):
    """Per-image Gram blocks ``(B, N, N, 9)`` from ``Q9`` ``(M, M, 9)``."""
    return Q9[rows[:, :, None], rows[:, None, :]]


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
    Ab = np.einsum("bdc,...nce->bnde", Rp, basis_rows).reshape(B, N * D, C)
    wflat = rw.reshape(B, N * D)
    r = np.where(wflat > 0, resid.reshape(B, N * D), 0.0)
    Aw = Ab * wflat[..., None]
    G = np.matmul(Aw.transpose(0, 2, 1), Ab) / F**2
    idx = np.arange(C)
    G[:, idx, idx] += lam / prior_var
    rhs = np.einsum("bme,bm->be", Aw, r) / F**2
    return np.linalg.solve(G, rhs[..., None])[..., 0]


def solve_expression(prep: _Prepared, rows, Rp, resid, rw, lam) -> np.ndarray:
    """Expression step of the alternation: :func:`solve_primal` on the
    expression basis with the identity fixed (its contribution is already
    subtracted in ``resid``).  Returns ``beta`` ``(B, E)``."""
    basis = prep.Bx[rows[0]] if np.all(rows == rows[:1]) else prep.Bx[rows]
    return solve_primal(basis, Rp, resid, rw, prep.tau2, lam, prep.F)


def solve_identity(prep: _Prepared, rows, Rp, resid, rw, lam) -> np.ndarray:
    """Identity step of the alternation (expression fixed): the dual form
    :func:`solve_identity_dual` when the model has more identity components
    than observed rows (``K > D N``, e.g. 199 against 136), else the primal
    :func:`solve_primal`; both give the same minimiser."""
    B, N, D = resid.shape
    if prep.A.shape[2] > N * D and lam > 0:
        return solve_identity_dual(prep, rows, Rp, resid, rw, lam)
    basis = prep.A[rows[0]] if np.all(rows == rows[:1]) else prep.A[rows]
    return solve_primal(basis, Rp, resid, rw, prep.sigma2, lam, prep.F)


def rodrigues(omega: np.ndarray) -> np.ndarray:
    """Rotation matrix ``exp([omega]_x)`` ``(B, 3, 3)`` of axis-angle vectors
    ``(B, 3)`` (Rodrigues' formula)."""
    th = np.linalg.norm(omega, axis=1)
    k = omega / np.maximum(th, 1e-300)[:, None]
    Kx = np.zeros((len(omega), 3, 3))
    Kx[:, 0, 1], Kx[:, 0, 2], Kx[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    Kx[:, 1, 0], Kx[:, 2, 0], Kx[:, 2, 1] = k[:, 2], -k[:, 1], k[:, 0]
    st, ct = np.sin(th)[:, None, None], np.cos(th)[:, None, None]
    return np.eye(3) + st * Kx + (1 - ct) * (Kx @ Kx)


def map_cost(prep: _Prepared, rows, s, R, t, alpha, beta, obs, rw, lam_id, lam_exp, return_prediction=False):
    """The normalised MAP cost ``(B,)`` that every step decreases:
    ``sum rw |obs - (s Rp S + t)|^2 / (s F)^2 + lam_id |alpha/sigma|^2 +
    lam_exp |beta/tau|^2`` (shapes as :func:`joint_gauss_newton_step`).
    With ``return_prediction`` also the predicted points ``(B, N, D)``."""
    D = obs.shape[2]
    S = _shape(prep, rows, alpha, beta)
    pred = s[:, None, None] * np.einsum("bdc,bnc->bnd", R[:, :D], S) + t[:, None, :D]
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


def joint_gauss_newton_step(prep: _Prepared, rows, s, R, t, alpha, beta, obs, rw, lam_id, lam_exp, damping):
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
    keep = (rw > 0).any(axis=(0, 2))
    if not keep.all():  # points no image of the batch observes (unmapped): out of the system
        rows, obs, rw = rows[:, keep], obs[:, keep], rw[:, keep]
    B, N, D = obs.shape
    shared = bool(np.all(rows == rows[:1]))
    r0 = rows[0]
    mu = prep.mean[r0][None] if shared else prep.mean[rows]
    Ai = prep.A[r0] if shared else None
    Bi = prep.Bx[r0] if shared else None
    S = _shape(prep, rows, alpha, beta)
    Rp = R[:, :D]
    sF = s * prep.F
    ok = rw > 0
    # r' = obs - t - s Rp mean: the residual with zero coefficients.
    rprime = np.where(ok, obs - t[:, None, :D] - s[:, None, None] * np.einsum("bdc,bnc->bnd", Rp, np.broadcast_to(mu, S.shape)), 0.0)
    # Pose Jacobian (B, N, D, P): rotation (3), log-scale (1), translation (D).
    Sx = np.zeros((B, N, 3, 3))
    Sx[..., 0, 1], Sx[..., 0, 2], Sx[..., 1, 2] = -S[..., 2], S[..., 1], -S[..., 0]
    Sx[..., 1, 0], Sx[..., 2, 0], Sx[..., 2, 1] = S[..., 2], -S[..., 1], S[..., 0]
    Jw = -s[:, None, None, None] * np.einsum("bdc,bnce->bnde", Rp, Sx)
    Js = s[:, None, None, None] * np.einsum("bdc,bnc->bnd", Rp, S)[..., None]
    Jt = np.broadcast_to(np.eye(D), (B, N, D, D))
    Jq = np.where(ok[..., None], np.concatenate([Jw, Js, Jt], axis=-1), 0.0)
    P = Jq.shape[-1]
    rhs = np.concatenate([rprime[..., None], Jq], axis=-1).transpose(0, 2, 1, 3).reshape(B, D * N, 1 + P) / sF[:, None, None]
    # Kd / (sF)^2 = Rp (Q/lam_id + Qe/lam_exp) Rp^T / F^2 + diag(1 / rw)
    if shared:
        Qc = prep.Q[r0][:, :, r0] / lam_id + prep.Qe[r0][:, :, r0] / lam_exp
    else:
        Qc = _gather_gram(prep.q9(lam_id, lam_exp), rows)
    Kd = _rotate_gram(Qc, Rp) / prep.F**2
    okf = ok.transpose(0, 2, 1).reshape(B, D * N)
    if not okf.all():
        Kd = np.where(okf[:, :, None] & okf[:, None, :], Kd, 0.0)
    idx = np.arange(N * D)
    Kd[:, idx, idx] += np.where(okf, 1.0 / np.where(okf, rw.transpose(0, 2, 1).reshape(B, D * N), 1.0), 1.0)
    X = np.linalg.solve(Kd, rhs)  # (B, ND, 1+P)
    Jqf = rhs[..., 1:]
    H = np.einsum("bmp,bmq->bpq", Jqf, X[..., 1:])
    g = np.einsum("bmp,bm->bp", Jqf, X[..., 0])
    dH = np.diagonal(H, axis1=1, axis2=2)
    H[:, np.arange(P), np.arange(P)] += damping[:, None] * dH + 1e-12 * dH.max(1, keepdims=True) + 1e-300
    dq = np.linalg.solve(H, g[..., None])[..., 0]
    z = (X[..., 0] - np.einsum("bmp,bp->bm", X[..., 1:], dq)).reshape(B, D, N).transpose(0, 2, 1) / sF[:, None, None]
    v = s[:, None, None] * np.einsum("bdc,bnd->bnc", Rp, z)  # Jc^T z = s [A B]^T Rp^T z
    if shared:
        vf = v.reshape(B, N * 3)
        alpha_new = (vf @ Ai.reshape(N * 3, -1)) * (prep.sigma2 / lam_id)
        beta_new = (vf @ Bi.reshape(N * 3, -1)) * (prep.tau2 / lam_exp)
    else:
        pa, pb = _project_coefficients(prep, rows, v)
        alpha_new = pa * (prep.sigma2 / lam_id)
        beta_new = pb * (prep.tau2 / lam_exp)
    R_new = R @ rodrigues(dq[:, :3])
    s_new = s * np.exp(np.clip(dq[:, 3], -1.0, 1.0))
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
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.clip(movement / movement_prev, 0.0, 0.999)
        est = movement * rho / (1.0 - rho)
        ok = np.isfinite(movement_prev) & (est < tolerance)
    return ok | (movement < tolerance * 1e-2)


# ------------------------------------------------------------ the fit
def fit(
    landmarks_2d,
    model: MorphableModel,
    landmarks_3d=None,
    config: FitConfig | None = None,
    *,
    image_height,
) -> FitResult:
    """Fit pose, identity and expression to landmarks of ``B`` images.

    Args:
        landmarks_2d: ``(B, 68, 2)`` (or ``(68, 2)``) 0-based image pixels;
            NaN rows are missing points.
        model: the morphable model (a full model, whose ``contour_candidates``
            enable landmark marching, or its 68-row ``landmark_model()``).
        landmarks_3d: optional ``(B, 68, 3)`` 3D landmark estimates: x, y as
            ``landmarks_2d`` (ignored: the 2D labels are used), z the depth in
            pixel units as in :func:`dhm_data.geometry.camera.model_to_image` (larger =
            closer); any depth offset is absorbed by ``tz``.  NaN z = no depth
            for that point.
        config: :class:`FitConfig`.
        image_height: image height in pixels, scalar or ``(B,)`` (needed for
            the vertical flip; it moves ``ty`` only).

    Returns:
        :class:`FitResult`.
    """
    config = config or FitConfig()
    lm = np.asarray(landmarks_2d, np.float64)
    single = lm.ndim == 2
    if single:
        lm = lm[None]
    if lm.ndim != 3 or lm.shape[1:] != (N_LANDMARKS, 2):
        raise FittingError(f"landmarks_2d: expected shape (B, 68, 2) or (68, 2) in pixels, got {np.shape(landmarks_2d)}")
    B = lm.shape[0]
    z = None
    if landmarks_3d is not None:
        l3 = np.asarray(landmarks_3d, np.float64)
        if single and l3.ndim == 2:
            l3 = l3[None]
        if l3.shape != (B, N_LANDMARKS, 3):
            raise FittingError(f"landmarks_3d: expected shape ({B}, 68, 3) to match landmarks_2d, got {np.shape(landmarks_3d)}")
        z = l3[..., 2]
    try:
        h = np.broadcast_to(np.asarray(image_height, np.float64), (B,)).copy()
    except ValueError:
        raise FittingError(f"image_height: expected a scalar or ({B},) pixel heights, got shape {np.shape(image_height)}") from None
    if not np.all(np.isfinite(h) & (h > 0)):
        raise FittingError(f"image_height: expected positive pixel heights, got {image_height!r}")
    prep = _prepare_cached(model)
    K, E = model.n_identity, model.n_expression

    obs2 = camera.image_to_model_frame(lm, h)  # posed frame x, y (up)
    lm_mask = _landmark_mask(prep, config.jaw == "silhouette")
    valid = np.isfinite(lm).all(-1) & lm_mask[None]
    n_points = valid.sum(1)
    fittable = n_points >= config.min_points

    out = {
        "pose_para": np.full((B, 7), np.nan),
        "shape_para": np.full((B, K), np.nan),
        "exp_para": np.full((B, E), np.nan),
        "iterations": np.zeros(B, np.int64),
        "converged": np.zeros(B, bool),
        "landmark_rows": np.tile(prep.base_rows, (B, 1)),
    }
    todo = np.flatnonzero(fittable)
    for start in range(0, len(todo), config.batch_size):
        sel = todo[start : start + config.batch_size]
        res = _fit_batch(prep, obs2[sel], None if z is None else z[sel], valid[sel], config)
        for k, v in res.items():
            out[k][sel] = v

    rows = out["landmark_rows"]
    vertices = np.where(rows >= 0, prep.vertices[np.maximum(rows, 0)], -1)
    fitted = _posed_landmarks(prep, rows, out["shape_para"], out["exp_para"], out["pose_para"], h)
    fitted[:, ~lm_mask] = np.nan
    vertices[:, ~lm_mask] = -1
    err = np.linalg.norm(fitted[..., :2] - lm, axis=-1)
    err = np.where(valid, err, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        residual_px = np.where(fittable, err.sum(1) / np.maximum(n_points, 1), np.nan)
        box = np.where(valid[..., None], lm, np.nan)
        wh = np.where(fittable, np.prod(np.nanmax(np.where(fittable[:, None, None], box, 0), 1)
                                        - np.nanmin(np.where(fittable[:, None, None], box, 0), 1), -1), np.nan)
        residual = residual_px / np.sqrt(wh)
    result = FitResult(
        pose_para=out["pose_para"],
        shape_para=out["shape_para"],
        exp_para=out["exp_para"],
        residual=residual,
        residual_px=residual_px,
        iterations=out["iterations"],
        converged=out["converged"],
        n_points=n_points,
        landmarks=fitted,
        landmark_vertices=vertices,
        max_residual=config.max_residual,
        config=config.to_dict(),
        image_height=h,
    )
    return result


def posed_model_landmarks(model: MorphableModel, shape_para, exp_para, pose_para, image_height, march: bool = True):
    """The 68 landmarks of a posed face in 0-based image pixels, ``(B, 68, 3)``.

    With ``march`` and a model that has contour candidates, the 17 jaw
    landmarks are placed on the silhouette for the pose
    (:func:`march_contour`), as in 300W-LP's synthesis; otherwise at the
    model's fixed landmark vertices.  NaN rows for unmapped landmarks.
    ``shape_para`` ``(B, K)``, ``exp_para`` ``(B, E)``, ``pose_para``
    ``(B, 7)``, ``image_height`` scalar or ``(B,)``.  Also returns the vertex
    used per landmark ``(B, 68)``.  (Models whose contour lists are shared by
    several landmarks, like eos's SFM, need observations to march -- see
    :func:`march_contour`; here every landmark of such a list lands on the
    one extreme vertex.)
    """
    prep = _prepare_cached(model)
    a = np.atleast_2d(np.asarray(shape_para, np.float64))
    b = np.atleast_2d(np.asarray(exp_para, np.float64)).reshape(a.shape[0], -1)
    pose = np.atleast_2d(np.asarray(pose_para, np.float64))
    B = a.shape[0]
    rows = np.tile(prep.base_rows, (B, 1))
    if march:
        _, R, _ = camera.pose_para_to_srt(pose)
        rows = march_contour(prep, rows, R, a, b)
    h = np.broadcast_to(np.asarray(image_height, np.float64), (B,))
    P = _posed_landmarks(prep, rows, a, b, pose, h)
    mask = _landmark_mask(prep, march)
    P[:, ~mask] = np.nan
    return P, np.where(mask[None] & (rows >= 0), prep.vertices[np.maximum(rows, 0)], -1)


def _posed_landmarks(prep, rows, alpha, beta, pose, h):
    """Fitted landmarks ``(B, 68, 3)`` in 0-based image pixels."""
    S = _shape(prep, np.maximum(rows, 0), np.nan_to_num(alpha), np.nan_to_num(beta))
    P = camera.model_to_image(S, pose, h)
    P[~np.isfinite(pose).all(1)] = np.nan
    return P


def _shape_all(prep, alpha, beta):
    """All prepared model rows ``(B, M, 3)`` (landmarks and contour
    candidates) for coefficients ``(B, K)``, ``(B, E)``: one GEMM each."""
    M, K = prep.A.shape[0], prep.A.shape[2]
    S = alpha @ prep.A.reshape(M * 3, K).T
    if prep.Bx.shape[2]:
        S = S + beta @ prep.Bx.reshape(M * 3, -1).T
    return prep.mean[None] + S.reshape(-1, M, 3)


def _shape(prep, rows, alpha, beta):
    """Model landmarks ``(B, N, 3)`` at model rows ``rows`` ``(B, N)`` (one
    GEMM on the shared rows, or on all rows then a gather with marching)."""
    B, N = rows.shape
    if np.all(rows == rows[:1]):
        r0 = rows[0]
        S = alpha @ prep.A[r0].reshape(N * 3, -1).T
        if prep.Bx.shape[2]:
            S = S + beta @ prep.Bx[r0].reshape(N * 3, -1).T
        return prep.mean[r0][None] + S.reshape(B, N, 3)
    return np.take_along_axis(_shape_all(prep, alpha, beta), rows[:, :, None], axis=1)


def _project_coefficients(prep, rows, v):
    """``sum_n basis[rows[b, n]]^T v[b, n]`` for identity and expression:
    ``v`` ``(B, N, 3)`` scattered into all prepared rows, then one GEMM.
    Returns ``(B, K)``, ``(B, E)``."""
    B, N = rows.shape
    M = prep.A.shape[0]
    V = np.zeros((B, M, 3))
    np.add.at(V, (np.arange(B)[:, None], rows), v)
    Vf = V.reshape(B, M * 3)
    return Vf @ prep.A.reshape(M * 3, -1), Vf @ prep.Bx.reshape(M * 3, -1)


def _pose(obs2, obs_z, S, w, wz):
    """Pose step: affine camera + SVD projection (2D), or Umeyama (with depth)."""
    if obs_z is None:
        aff = estimate_affine_camera(obs2, S, w)
        s, R, t2 = affine_to_similarity(aff, obs2, S, w)
        t = np.concatenate([t2, np.zeros((len(s), 1))], axis=1)
        return s, R, t
    # With depth: Umeyama on the points that have z, then the 2D-optimal
    # scale and x, y translation over all points is not needed: Umeyama uses
    # every point with depth; points without depth still enter the shape solve.
    obs3 = np.concatenate([obs2, np.nan_to_num(obs_z)[..., None]], axis=-1)
    s, R, t = umeyama_similarity(obs3, S, wz)
    return s, R, t


def _point_weights(base_w, R, jaw_fallback, config):
    """Per-point weights for this iteration: the base weights (0 = missing,
    jaw_weight on the jaw in the fallback) and, in the fallback, ``cos(yaw)``
    on the jaw side turning away from the camera."""
    w = base_w.copy()
    if jaw_fallback and config.far_jaw_cos_yaw:
        yaw = np.arcsin(np.clip(-R[:, 0, 2], -1, 1))
        cosy = np.cos(yaw)
        far_left_jaw = yaw > 0  # yaw > 0 turns the image-right jaw (9..16) away
        w[:, 9:17] *= np.where(far_left_jaw, cosy, 1.0)[:, None]
        w[:, 0:8] *= np.where(far_left_jaw, 1.0, cosy)[:, None]
    return w


def _initial_pose(obs2, obs_z, zvalid, has_depth, S, w):
    """Pose from the current shape: affine camera + SVD (2D), Umeyama where
    the image has enough depth values."""
    s, R, t = _pose(obs2, None, S, w, None)
    if obs_z is not None and np.any(has_depth):
        d = has_depth
        obs3 = np.concatenate([obs2[d], np.where(zvalid[d], obs_z[d], 0.0)[..., None]], axis=-1)
        s[d], R[d], t[d] = umeyama_similarity(obs3, S[d], np.where(zvalid[d], w[d], 0.0))
    return s, R, t


def _fit_batch(prep: _Prepared, obs2, obs_z, valid, config: FitConfig) -> dict:
    B = obs2.shape[0]
    K = prep.A.shape[2]
    E = prep.Bx.shape[2]
    D = 2 if obs_z is None else 3
    rows = np.tile(prep.base_rows, (B, 1))
    w0 = valid.astype(np.float64)
    if config.jaw == "fixed":
        prep = replace(prep, contour_rows=None)
    jaw_fallback = prep.contour_rows is None and config.jaw == "silhouette"
    base_w = w0.copy()
    if jaw_fallback:
        base_w[:, :17] *= config.jaw_weight
    zvalid = has_depth = None
    if obs_z is not None:
        zvalid = valid & np.isfinite(obs_z)
        has_depth = zvalid.sum(1) >= config.min_points
    obs2 = np.where(valid[..., None], obs2, 0.0)
    if obs_z is not None:
        obs = np.concatenate([obs2, np.where(zvalid, obs_z, 0.0)[..., None]], axis=-1)
    else:
        obs = obs2

    alpha = np.zeros((B, K))
    beta = np.zeros((B, E))
    S0 = _shape(prep, np.maximum(rows, 0), alpha, beta)
    s, R, t = _initial_pose(obs2, obs_z, zvalid, has_depth, S0, base_w)
    move_prev = np.full(B, np.inf)
    last_pred = np.zeros(obs.shape)
    damping = np.full(B, 1e-3)
    iterations = np.zeros(B, np.int64)
    converged = np.zeros(B, bool)
    active = np.arange(B)
    lam_id, lam_exp = config.regularisation, config.lam_exp

    def row_weights(a, w_pt):
        if obs_z is None:
            return np.repeat(w_pt[..., None], 2, axis=-1)
        wz = np.where(zvalid[a] & has_depth[a][:, None], w_pt * config.depth_weight, 0.0)
        return np.concatenate([np.repeat(w_pt[..., None], 2, axis=-1), wz[..., None]], axis=-1)

    for it in range(config.max_iterations):
        a = active
        if config.method == "gauss-newton":
            w_pt = _point_weights(base_w[a], R[a], jaw_fallback, config)
            if it < config.march_iterations:
                rows[a] = march_contour(prep, rows[a].copy(), R[a], alpha[a], beta[a], s[a], t[a], obs[a], valid[a])
            rs = np.maximum(rows[a], 0)
            rw = row_weights(a, w_pt)
            cur = (s[a], R[a], t[a], alpha[a], beta[a])
            before, pred_cur = map_cost(prep, rs, *cur, obs[a], rw, lam_id, lam_exp, return_prediction=True)
            prop = joint_gauss_newton_step(prep, rs, *cur, obs[a], rw, lam_id, lam_exp, damping[a])
            after, pred_prop = map_cost(prep, rs, *prop, obs[a], rw, lam_id, lam_exp, return_prediction=True)
            accept = np.isfinite(after) & (after <= before)
            sa, Ra, ta, al, be = (np.where(accept.reshape((-1,) + (1,) * (p.ndim - 1)), p, c) for p, c in zip(prop, cur))
            damping[a] = np.where(accept, damping[a] * 0.1, damping[a] * 10.0)
            mv = landmark_movement(pred_prop, pred_cur, rw, cur[0], prep.F)
            # A rejected step (LM raises the damping) ends the fit if it
            # proposed essentially no movement, or raised the cost by under
            # 1%: at the minimum, Gauss-Newton's model of a non-zero-residual
            # problem can no longer resolve an improvement (measured: the
            # exact shape-only optimum there is lower by ~1e-5 relative).
            stalled = (mv < config.tolerance * 1e-2) | ((it > 0) & (after - before <= 1e-2 * before))
            done = np.where(accept, converged_mask(mv, move_prev[a], config.tolerance), stalled)
            move_prev[a] = np.where(accept, mv, move_prev[a])
        else:
            S = _shape(prep, np.maximum(rows[a], 0), alpha[a], beta[a])
            sa, Ra, ta = _initial_pose(obs2[a], None if obs_z is None else obs_z[a], None if zvalid is None else zvalid[a],
                                       None if has_depth is None else has_depth[a], S, base_w[a])
            w_pt = _point_weights(base_w[a], Ra, jaw_fallback, config)
            if it < config.march_iterations:
                rows[a] = march_contour(prep, rows[a].copy(), Ra, alpha[a], beta[a], sa, ta, obs[a], valid[a])
            rs = np.maximum(rows[a], 0)
            Rp = Ra[:, :D]
            tgt = (obs[a] - ta[:, None, :D]) / sa[:, None, None]
            rw = row_weights(a, w_pt)
            mu = prep.mean[rs]
            resid_id = tgt - np.einsum("bdc,bnc->bnd", Rp, mu + np.einsum("bnce,be->bnc", prep.Bx[rs], beta[a]))
            al = solve_identity(prep, rs, Rp, resid_id, rw, lam_id)
            Ab = np.einsum("bnck,bk->bnc", prep.A[rs], al)
            resid_exp = tgt - np.einsum("bdc,bnc->bnd", Rp, mu + Ab)
            be = solve_expression(prep, rs, Rp, resid_exp, rw, lam_exp)
            pred = sa[:, None, None] * np.einsum("bdc,bnc->bnd", Rp, mu + Ab + np.einsum("bnce,be->bnc", prep.Bx[rs], be)) \
                + ta[:, None, :D]
            mv = landmark_movement(pred, last_pred[a], rw, sa, prep.F) if it else np.full(len(a), np.inf)
            done = converged_mask(mv, move_prev[a], config.tolerance)
            move_prev[a] = mv
            last_pred[a] = pred
        alpha[a], beta[a] = al, be
        s[a], R[a], t[a] = sa, Ra, ta
        iterations[a] = it + 1
        converged[a] = done
        active = a[~done]
        if active.size == 0:
            break

    if config.method == "alternating":
        # Final pose for the final shape (the returned camera matches the coefficients).
        S = _shape(prep, np.maximum(rows, 0), alpha, beta)
        s, R, t = _initial_pose(obs2, obs_z, zvalid, has_depth, S, base_w)
    pose = camera.srt_to_pose_para(s, R, t)
    return {"pose_para": pose, "shape_para": alpha, "exp_para": beta, "iterations": iterations,
            "converged": converged, "landmark_rows": rows}

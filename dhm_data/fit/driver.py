"""The fit: pose, identity and expression of a morphable model from 68
landmarks of ``B`` images, batched (einsum, GEMMs and batched
``np.linalg.solve``, no Python loop over faces).

Problem (per image)::

    minimise over s, R, t, alpha, beta
        sum_i w_i || x_i - P(s R S_i(alpha, beta) + t) ||^2 / (s F)^2
        + lam_id  * sum_k (alpha_k / sigma_k)^2
        + lam_exp * sum_e (beta_e  / tau_e )^2

``x_i`` are the landmarks in the posed model frame
(:func:`dhm_data.geometry.camera.image_to_model_frame`: x right, y up,
1-based origin), where ``Pose_Para`` acts as ``s R S + t``; ``P`` keeps x, y
(2D) or x, y, z (with 3D estimates); ``S_i = mean_i + A_i alpha + B_i beta``
is landmark ``i`` of the model; ``F`` the face size of the mean landmarks
(model units), so ``s F`` is the face size in pixels and one regularisation
weight works at any image scale; ``sigma`` / ``tau`` the model's prior
standard deviations (Blanz & Vetter 1999); ``w_i`` 0 for a missing landmark.

Initialisation (:func:`initial_state`): mean shape, pose from the landmarks
that have a fixed model vertex (affine camera + SVD,
:mod:`dhm_data.fit.camera_estimation`; Umeyama with depth), then the jaw
landmarks are marched onto their contour vertices for that pose
(:mod:`dhm_data.fit.contour`).  Jaw landmarks whose vertex is not known yet
(a contour list without a fixed vertex, as in the Surrey model) never enter
the first pose: placed on an arbitrary vertex of their list they would tilt
the face by tens of degrees and trap the marching in a wrong pose.

Then one of two iteration strategies (:data:`STRATEGIES`):

* :func:`gauss_newton_iterations` (``method="gauss-newton"``, default): per
  iteration, marching (first ``march_iterations`` only), then one joint
  damped Gauss-Newton step (:mod:`dhm_data.fit.gauss_newton`);
* :func:`alternating_iterations` (``method="alternating"``, eos's
  ``fit_shape_and_pose``): pose again, marching, identity with expression
  fixed, expression with identity fixed (:mod:`dhm_data.fit.linear`).

Both minimise the same cost; the alternation crawls along the pose / shape
valley, which is why it is not the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dhm_data.errors import FittingError
from dhm_data.fit.camera_estimation import affine_to_similarity, estimate_affine_camera, umeyama_similarity
from dhm_data.fit.config import FitConfig
from dhm_data.fit.contour import jaw_point_weights, march_contour
from dhm_data.fit.gauss_newton import converged_mask, joint_gauss_newton_step, landmark_movement, map_cost
from dhm_data.fit.linear import solve_expression, solve_identity
from dhm_data.fit.model_rows import Prepared, landmark_mask, prepare_cached, shape_rows
from dhm_data.fit.result import FitResult, fit_residuals
from dhm_data.geometry import camera
from dhm_data.models.morphable import N_LANDMARKS, MorphableModel

__all__ = ["fit", "posed_model_landmarks", "gauss_newton_iterations", "alternating_iterations", "STRATEGIES"]


@dataclass
class Problem:
    """One batch's data: observations in the posed frame ``obs`` ``(B, 68,
    D)`` (zeros where missing), the 2D part ``obs2`` ``(B, 68, 2)``, depth
    ``obs_z`` ``(B, 68)`` or ``None``, masks ``valid`` / ``zvalid`` ``(B,
    68)``, ``has_depth`` ``(B,)``, base point weights ``base_w`` ``(B, 68)``."""

    prep: Prepared
    config: FitConfig
    obs: np.ndarray
    obs2: np.ndarray
    obs_z: np.ndarray | None
    valid: np.ndarray
    zvalid: np.ndarray | None
    has_depth: np.ndarray | None
    base_w: np.ndarray
    jaw_fallback: bool

    @property
    def D(self) -> int:
        return self.obs.shape[2]

    def point_weights(self, a, R):
        """``(len(a), 68)`` weights of images ``a`` for rotations ``R``."""
        if self.jaw_fallback and self.config.far_jaw_cos_yaw:
            return jaw_point_weights(self.base_w[a], R, True)
        return self.base_w[a]

    def row_weights(self, a, w_pt):
        """``(len(a), 68, D)`` per-coordinate weights (z: ``depth_weight``
        where the point has depth and the image enough of it)."""
        w2 = np.repeat(w_pt[..., None], 2, axis=-1)
        if self.obs_z is None:
            return w2
        wz = np.where(self.zvalid[a] & self.has_depth[a][:, None], w_pt * self.config.depth_weight, 0.0)
        return np.concatenate([w2, wz[..., None]], axis=-1)

    def pose(self, a, S, w):
        """Pose ``(s, R, t)`` of images ``a`` for model points ``S`` ``(len(a),
        68, 3)`` and point weights ``w``: affine camera + SVD projection on
        x, y; Umeyama where the image has enough depth values."""
        obs2 = self.obs2[a]
        s, R, t2 = affine_to_similarity(estimate_affine_camera(obs2, S, w), obs2, S, w)
        t = np.concatenate([t2, np.zeros((len(s), 1))], axis=1)
        if self.obs_z is not None and np.any(self.has_depth[a]):
            d = self.has_depth[a]
            zv = self.zvalid[a][d]
            obs3 = np.concatenate([obs2[d], np.where(zv, self.obs_z[a][d], 0.0)[..., None]], axis=-1)
            s[d], R[d], t[d] = umeyama_similarity(obs3, S[d], np.where(zv, w[d], 0.0))
        return s, R, t

    def march(self, a, rows, R, alpha, beta, s, t):
        return march_contour(self.prep, rows.copy(), R, alpha, beta, s, t, self.obs[a], self.valid[a])


@dataclass
class State:
    """The iterate of a batch: pose ``s`` ``(B,)``, ``R`` ``(B, 3, 3)``, ``t``
    ``(B, 3)``, coefficients ``alpha`` ``(B, K)``, ``beta`` ``(B, E)``, the
    prepared row of each landmark ``rows`` ``(B, 68)``, ``iterations`` and
    ``converged`` ``(B,)``."""

    s: np.ndarray
    R: np.ndarray
    t: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    rows: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray


def initial_state(p: Problem) -> State:
    """Mean shape; pose from the landmarks with a fixed vertex; jaw marched."""
    prep = p.prep
    B = p.obs.shape[0]
    a = np.arange(B)
    rows = np.tile(prep.base_rows, (B, 1))
    alpha = np.zeros((B, prep.A.shape[2]))
    beta = np.zeros((B, prep.Bx.shape[2]))
    S0 = np.broadcast_to(prep.mean[np.maximum(prep.base_rows, 0)], (B, N_LANDMARKS, 3))  # the mean shape
    s, R, t = p.pose(a, S0, p.base_w * prep.mapped[None])
    if p.config.march_iterations > 0 and prep.contour_rows is not None:
        rows = p.march(a, rows, R, alpha, beta, s, t)
    return State(s, R, t, alpha, beta, rows, np.zeros(B, np.int64), np.zeros(B, bool))


def gauss_newton_iterations(p: Problem, st: State) -> State:
    """The default strategy: per iteration, marching (first
    ``march_iterations``), then one joint Levenberg-damped Gauss-Newton step
    on pose and shape, accepted when it lowers :func:`map_cost`.  A face
    stops when :func:`converged_mask` passes on an accepted step, or when a
    rejected step proposed essentially no movement or raised the cost by
    under 1% (at the minimum, the Gauss-Newton model of a non-zero-residual
    problem can no longer resolve an improvement)."""
    cfg, prep = p.config, p.prep
    lam_id, lam_exp, tol = cfg.regularisation, cfg.lam_exp, cfg.tolerance
    B = len(st.s)
    # Work on compact arrays of the faces still iterating (``a`` = their
    # indices); a face's results go back into ``st`` when it stops.
    a = np.arange(B)
    s, R, t, alpha, beta, rows = st.s, st.R, st.t, st.alpha, st.beta, st.rows
    obs_all = p.obs
    move_prev = np.full(B, np.inf)
    damping = np.full(B, 1e-3)
    marching = prep.contour_rows is not None
    reweight = p.jaw_fallback and cfg.far_jaw_cos_yaw
    rw = rs = cost = pred = None  # weights, rows, cost and prediction of the current iterate
    for it in range(cfg.max_iterations):
        marched = marching and 0 < it < cfg.march_iterations
        if marched:
            rows = p.march(a, rows, R, alpha, beta, s, t)
        if rw is None or reweight:
            rw = p.row_weights(a, p.point_weights(a, R))
            # landmarks no face of the batch observes stay out of every step
            cols = np.flatnonzero((rw > 0).any(axis=(0, 2)))
            rw, obs = rw[:, cols], obs_all[:, cols]
            rs = None
        if rs is None or marched:
            rs = np.maximum(rows[:, cols], 0)
        if cost is None or marched or reweight:
            cost, pred = map_cost(prep, rs, s, R, t, alpha, beta, obs, rw, lam_id, lam_exp, return_prediction=True)
        prop = joint_gauss_newton_step(prep, rs, s, R, t, alpha, beta, obs, rw, lam_id, lam_exp, damping)
        after, pred_prop = map_cost(prep, rs, *prop, obs, rw, lam_id, lam_exp, return_prediction=True)
        accept = np.isfinite(after) & (after <= cost)
        mv = landmark_movement(pred_prop, pred, rw, s, prep.F)
        stalled = (mv < tol * 1e-2) | ((it > 0) & (after - cost <= 1e-2 * cost))
        done = np.where(accept, converged_mask(mv, move_prev, tol), stalled)
        move_prev = np.where(accept, mv, move_prev)
        damping = np.where(accept, damping * 0.1, damping * 10.0)
        if accept.all():
            (s, R, t, alpha, beta), cost, pred = prop, after, pred_prop
        elif accept.any():
            s, R, t, alpha, beta = (np.where(accept.reshape((-1,) + (1,) * (q.ndim - 1)), q, c)
                                    for q, c in zip(prop, (s, R, t, alpha, beta)))
            cost, pred = np.where(accept, after, cost), np.where(accept[:, None, None], pred_prop, pred)
        last = it == cfg.max_iterations - 1
        if done.any() or last:
            st.s[a], st.R[a], st.t[a], st.alpha[a], st.beta[a], st.rows[a] = s, R, t, alpha, beta, rows
            st.iterations[a] = it + 1
            st.converged[a] = done
            if last or done.all():
                break
            k = ~done
            a, s, R, t, alpha, beta, rows, rs, obs = a[k], s[k], R[k], t[k], alpha[k], beta[k], rows[k], rs[k], obs[k]
            rw, cost, pred, move_prev, damping, obs_all = rw[k], cost[k], pred[k], move_prev[k], damping[k], obs_all[k]
    return st


def alternating_iterations(p: Problem, st: State) -> State:
    """eos's strategy (``fit_shape_and_pose``; Blanz & Vetter 2003): per
    iteration, the pose for the current shape (affine camera + SVD),
    marching (first ``march_iterations``), then identity with the expression
    fixed and expression with the identity fixed.  Stops by
    :func:`converged_mask` on the movement of the predicted landmarks; the
    returned pose is re-estimated for the final shape."""
    cfg, prep = p.config, p.prep
    B = len(st.s)
    D = p.D
    move_prev = np.full(B, np.inf)
    last_pred = np.zeros(p.obs.shape)
    active = np.arange(B)
    for it in range(cfg.max_iterations):
        a = active
        S = shape_rows(prep, np.maximum(st.rows[a], 0), st.alpha[a], st.beta[a])
        sa, Ra, ta = p.pose(a, S, p.base_w[a])
        w_pt = p.point_weights(a, Ra)
        if 0 < it < cfg.march_iterations:
            st.rows[a] = p.march(a, st.rows[a], Ra, st.alpha[a], st.beta[a], sa, ta)
        rs = np.maximum(st.rows[a], 0)
        Rp = Ra[:, :D]
        tgt = (p.obs[a] - ta[:, None, :D]) / sa[:, None, None]
        rw = p.row_weights(a, w_pt)
        mu = prep.mean[rs]
        resid_id = tgt - np.einsum("bdc,bnc->bnd", Rp, mu + np.einsum("bnce,be->bnc", prep.Bx[rs], st.beta[a]))
        al = solve_identity(prep, rs, Rp, resid_id, rw, cfg.regularisation)
        Ab = np.einsum("bnck,bk->bnc", prep.A[rs], al)
        be = solve_expression(prep, rs, Rp, tgt - np.einsum("bdc,bnc->bnd", Rp, mu + Ab), rw, cfg.lam_exp)
        pred = sa[:, None, None] * np.einsum("bdc,bnc->bnd", Rp, mu + Ab + np.einsum("bnce,be->bnc", prep.Bx[rs], be)) \
            + ta[:, None, :D]
        mv = landmark_movement(pred, last_pred[a], rw, sa, prep.F) if it else np.full(len(a), np.inf)
        done = converged_mask(mv, move_prev[a], cfg.tolerance)
        move_prev[a] = mv
        last_pred[a] = pred
        st.alpha[a], st.beta[a] = al, be
        st.s[a], st.R[a], st.t[a] = sa, Ra, ta
        st.iterations[a] = it + 1
        st.converged[a] = done
        active = a[~done]
        if active.size == 0:
            break
    # the returned camera matches the final coefficients
    every = np.arange(B)
    st.s, st.R, st.t = p.pose(every, shape_rows(prep, np.maximum(st.rows, 0), st.alpha, st.beta), p.base_w)
    return st


#: ``FitConfig.method`` -> iteration strategy.
STRATEGIES = {"gauss-newton": gauss_newton_iterations, "alternating": alternating_iterations}


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
    prep = prepare_cached(model)
    K, E = model.n_identity, model.n_expression

    obs2 = camera.image_to_model_frame(lm, h)  # posed frame x, y (up)
    lm_mask = landmark_mask(prep, config.jaw == "silhouette")
    valid = np.isfinite(lm).all(-1) & lm_mask[None]
    n_points = valid.sum(1)
    fittable = n_points >= config.min_points

    todo = np.flatnonzero(fittable)
    if 0 < len(todo) == B <= config.batch_size:  # one batch of every image: its state is the result
        st = _fit_batch(prep, obs2, z, valid, config)
        out = {"pose_para": camera.srt_to_pose_para(st.s, st.R, st.t), "shape_para": st.alpha, "exp_para": st.beta,
               "iterations": st.iterations, "converged": st.converged, "landmark_rows": st.rows}
    else:
        out = {
            "pose_para": np.full((B, 7), np.nan),
            "shape_para": np.full((B, K), np.nan),
            "exp_para": np.full((B, E), np.nan),
            "iterations": np.zeros(B, np.int64),
            "converged": np.zeros(B, bool),
            "landmark_rows": np.tile(prep.base_rows, (B, 1)),
        }
        for start in range(0, len(todo), config.batch_size):
            sel = todo[start : start + config.batch_size]
            st = _fit_batch(prep, obs2[sel], None if z is None else z[sel], valid[sel], config)
            out["pose_para"][sel] = camera.srt_to_pose_para(st.s, st.R, st.t)
            out["shape_para"][sel], out["exp_para"][sel] = st.alpha, st.beta
            out["iterations"][sel], out["converged"][sel], out["landmark_rows"][sel] = st.iterations, st.converged, st.rows

    rows = out["landmark_rows"]
    vertices = np.where(rows >= 0, prep.vertices[np.maximum(rows, 0)], -1)
    fitted = _posed_landmarks(prep, rows, out["shape_para"], out["exp_para"], out["pose_para"], h)
    fitted[:, ~lm_mask] = np.nan
    vertices[:, ~lm_mask] = -1
    residual, residual_px = fit_residuals(fitted, lm, valid)
    if len(todo) < B:
        residual = np.where(fittable, residual, np.nan)
        residual_px = np.where(fittable, residual_px, np.nan)
    return FitResult(
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


def posed_model_landmarks(model: MorphableModel, shape_para, exp_para, pose_para, image_height, march: bool = True):
    """The 68 landmarks of a posed face in 0-based image pixels, ``(B, 68, 3)``.

    With ``march`` and a model that has contour candidates, the 17 jaw
    landmarks are placed on the silhouette for the pose
    (:func:`dhm_data.fit.contour.march_contour`), as in 300W-LP's synthesis; otherwise at the
    model's fixed landmark vertices.  NaN rows for unmapped landmarks.
    ``shape_para`` ``(B, K)``, ``exp_para`` ``(B, E)``, ``pose_para``
    ``(B, 7)``, ``image_height`` scalar or ``(B,)``.  Also returns the vertex
    used per landmark ``(B, 68)``.  (Models whose contour lists are shared by
    several landmarks, like eos's SFM, need observations to march -- see
    :func:`dhm_data.fit.contour.march_contour`; here every landmark of such a list lands on the
    one extreme vertex.)
    """
    prep = prepare_cached(model)
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
    mask = landmark_mask(prep, march)
    P[:, ~mask] = np.nan
    return P, np.where(mask[None] & (rows >= 0), prep.vertices[np.maximum(rows, 0)], -1)


def _posed_landmarks(prep, rows, alpha, beta, pose, h):
    """Fitted landmarks ``(B, 68, 3)`` in 0-based image pixels."""
    # images not fitted have NaN coefficients (and pose): evaluated at 0, then set NaN below
    S = shape_rows(prep, np.maximum(rows, 0), np.where(np.isfinite(alpha), alpha, 0.0), np.where(np.isfinite(beta), beta, 0.0))
    P = camera.model_to_image(S, pose, h)
    P[~np.isfinite(pose).all(1)] = np.nan
    return P


def _problem(prep: Prepared, obs2, obs_z, valid, config: FitConfig) -> Problem:
    marching = prep.contour_rows is not None and config.jaw == "silhouette"
    jaw_fallback = prep.contour_rows is None and config.jaw == "silhouette"
    if not marching and prep.contour_rows is not None:
        prep = prep.without_contour()
    base_w = valid.astype(np.float64)
    if jaw_fallback:
        base_w[:, :17] *= config.jaw_weight
    zvalid = has_depth = None
    obs2 = np.where(valid[..., None], obs2, 0.0)
    obs = obs2
    if obs_z is not None:
        zvalid = valid & np.isfinite(obs_z)
        has_depth = zvalid.sum(1) >= config.min_points
        obs = np.concatenate([obs2, np.where(zvalid, obs_z, 0.0)[..., None]], axis=-1)
    return Problem(prep, config, obs, obs2, obs_z, valid, zvalid, has_depth, base_w, jaw_fallback)


def _fit_batch(prep: Prepared, obs2, obs_z, valid, config: FitConfig) -> State:
    p = _problem(prep, obs2, obs_z, valid, config)
    return STRATEGIES[config.method](p, initial_state(p))

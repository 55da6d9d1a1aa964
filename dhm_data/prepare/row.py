"""The prepare step: one sample + its decoded image -> the arrays of a shard row.

Pure functions over arrays (the image is decoded by the caller's I/O layer):
ground-truth crop, landmarks in crop pixels, posed 3D landmarks from the
parameters (labels or fitted) unless the dataset gives them, and the DHM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dhm_data.datasets.base import Sample
from dhm_data.errors import CropError, PrepareError
from dhm_data.geometry import camera, landmark_error
from dhm_data.geometry.crop import CropWindow, apply_affine, crop_window, unsnapped_crop_affine
from dhm_data.geometry.landmarks68 import mirror_landmarks
from dhm_data.models.morphable import MorphableModel, fit_length
from dhm_data.prepare.dhm import render_dhm
from dhm_data.shards.schema import DEFAULT_DHM_STORAGE


@dataclass(frozen=True)
class PrepareConfig:
    crop_size: int = 224
    margin: float = 0.3
    sigma: float = 1.0
    dhm_storage: str = DEFAULT_DHM_STORAGE

    @classmethod
    def from_pipeline(cls, pipeline) -> "PrepareConfig":
        """From a checked :class:`dhm_data.build.config.Pipeline` (its
        ``crop_size``, ``margin``, ``sigma`` and ``dhm_storage``)."""
        return cls(pipeline.crop_size, pipeline.margin, pipeline.sigma, pipeline.dhm_storage)


#: Largest label projection error (:func:`label_projection_error`) a sample
#: may have.  Measured on the real files with the 68-row BFM subset (40
#: identity, 10 expression components, so the labels are truncated): 1,000
#: AFLW2000-3D files median 0.0084, 99th percentile 0.019, max 0.026; the
#: three 300W-LP k = 0 files 0.003-0.024 with pts_3d and up to 0.049 with
#: the contour-following pt2d.  The same labels multiplied into the Surrey
#: Face Model give 0.48 at least (median 5.6).  See docs/build.md.
MAX_LABEL_PROJECTION_ERROR = 0.1


def label_projection_error(samples: list, model: MorphableModel) -> np.ndarray:
    """``(N,)`` how far each sample's labelled 3DMM parameters, reconstructed
    with ``model`` (a 68-row landmark model) and posed, land from its 2D
    landmark labels: the mean distance over the landmarks the model maps,
    divided by ``sqrt(w h)`` of the labels' box (an NME).  NaN for a sample
    without parameters.  A mirrored sample is posed from its original
    photo's parameters (as its 3D landmarks are)."""
    out = np.full(len(samples), np.nan)
    todo = []
    for i, s in enumerate(samples):
        m = s.extra.get("mirror_source")
        if m is not None:
            todo.append((i, m["pose_para"], m["shape_para"], m["exp_para"], float(m["width"])))
        elif s.has_parameters:
            todo.append((i, s.pose_para, s.shape_para, s.exp_para, np.nan))
    if not todo:
        return out
    P = posed_landmarks(model, np.stack([np.asarray(t[1], np.float64) for t in todo]),
                        np.stack([fit_length(t[2], model.n_identity) for t in todo]),
                        np.stack([fit_length(t[3], model.n_expression) for t in todo]),
                        np.array([samples[t[0]].image_size[0] for t in todo], np.float64),
                        np.array([t[4] for t in todo]))
    L = np.stack([np.asarray(samples[t[0]].landmarks_2d, np.float64) for t in todo])     # (T, 68, 2)
    # the labels' whole box normalises, also where the model leaves some landmarks unmapped
    err = landmark_error.mean_error(P[:, :, :2], L) / np.maximum(landmark_error.box_size(L), 1e-6)
    out[[t[0] for t in todo]] = np.where(np.isfinite(err), err, np.inf)
    return out


def posed_landmarks(model: MorphableModel, pose_para, shape_para, exp_para, image_height, mirror_width=None) -> np.ndarray:
    """``(..., 68, 3)`` posed 3D landmarks in 0-based source pixels (z in pixel units).

    ``model`` is a landmark model (68 rows); ``pose_para`` ``(..., 7)``,
    ``shape_para`` ``(..., K')``, ``exp_para`` ``(..., E')`` (truncated or
    zero-padded to the model's sizes), ``image_height`` scalar or ``(...)``.
    With ``mirror_width`` W (scalar or ``(...)``; NaN entries: not mirrored)
    the result is mirrored (``x -> W - 1 - x``) and re-ordered with the
    68-point mirror permutation (a ``_Flip`` sample reconstructed from its
    original's labels).
    """
    S = model.reconstruct(fit_length(shape_para, model.n_identity), fit_length(exp_para, model.n_expression))
    P = camera.model_to_image(S[..., : model.landmark_indices.size, :], pose_para, image_height)
    if mirror_width is not None:
        W = np.asarray(mirror_width, np.float64)
        flipped = mirror_landmarks(P, W[..., None])  # the one 68-point mirror rule
        P = np.where(np.isfinite(W)[..., None, None], flipped, P)
    return P


def check_landmarks(sample: Sample, image_hw) -> None:
    """Reject NaN/inf labels and landmarks outside the image (more than one
    box size away: labels of occluded points may legitimately leave the
    frame a little)."""
    lm = np.asarray(sample.landmarks_2d, np.float64)
    if lm.shape != (68, 2):
        raise PrepareError(f"landmarks have shape {lm.shape}, expected (68, 2)")
    bad = ~np.isfinite(lm).all(axis=1)
    if bad.any():
        raise PrepareError(f"{int(bad.sum())} of 68 landmarks are NaN/inf (points {np.flatnonzero(bad)[:8].tolist()}...)")
    h, w = image_hw
    lo, hi = lm.min(0), lm.max(0)
    size = float(np.max(hi - lo))
    if lo[0] < -size or lo[1] < -size or hi[0] > w - 1 + size or hi[1] > h - 1 + size:
        raise PrepareError(f"landmarks lie outside the {w}x{h} image (box {lo.round(1).tolist()} - {hi.round(1).tolist()})")


def sample_window(sample: Sample, config: PrepareConfig) -> CropWindow:
    """The snapped crop window of ``sample`` (:func:`dhm_data.geometry.crop.crop_window`)."""
    try:
        return crop_window(sample.landmarks_2d, config.crop_size, config.margin)
    except CropError as e:
        raise PrepareError(str(e)) from e


def pose_parameters(sample: Sample):
    """What :func:`posed_landmarks` needs for ``sample``'s 3D landmarks:
    ``(pose, shape, exp, image height, mirror width or NaN)``, or None when
    the dataset gives the landmarks themselves; :class:`PrepareError` when
    there are neither landmarks nor parameters.  A mirrored sample is posed
    from its original photo's parameters (``extra["mirror_source"]``)."""
    if sample.landmarks_3d is not None:
        return None
    h = sample.image_size[0]
    mirror = sample.extra.get("mirror_source")
    if mirror is not None:
        return mirror["pose_para"], mirror["shape_para"], mirror["exp_para"], h, float(mirror["width"])
    if sample.pose_para is not None and sample.shape_para is not None:
        return sample.pose_para, sample.shape_para, sample.exp_para, h, np.nan
    raise PrepareError("no 3D landmarks and no 3DMM parameters (run the fit stage)")


def source_landmarks_3d(samples: list, model: MorphableModel) -> list:
    """``(68, 3)`` posed 3D landmarks in source pixels for each sample: the
    dataset's own, else posed from the 3DMM parameters, all in one batched
    :func:`posed_landmarks` call (a sample without either raises
    :class:`PrepareError`, see :func:`pose_parameters`)."""
    params = [pose_parameters(s) for s in samples]
    out = [None if p is not None else np.asarray(s.landmarks_3d, np.float64) for s, p in zip(samples, params)]
    todo = [i for i, p in enumerate(params) if p is not None]
    if todo:
        def stack(j, n):
            return np.stack([fit_length(params[i][j], n) for i in todo])

        P = posed_landmarks(model, np.stack([np.asarray(params[i][0], np.float64) for i in todo]),
                            stack(1, model.n_identity), stack(2, model.n_expression),
                            np.array([params[i][3] for i in todo], np.float64),
                            np.array([params[i][4] for i in todo], np.float64))
        for k, i in enumerate(todo):
            out[i] = P[k]
    return out


def prepare_row(sample: Sample, A: np.ndarray, landmarks_3d: np.ndarray, label_source: str, fit_residual=np.nan,
                fit_converged=True) -> dict:
    """The shard row of one sample without its pixel fields (image, DHM).

    ``A`` 2x3 source -> crop affine; ``landmarks_3d`` ``(68, 3)`` in source
    pixels.  The row's ``landmarks_3d`` (crop pixels, float32) is what the DHM
    is rendered from.
    """
    return prepare_rows([sample], [A], [landmarks_3d], [label_source], [fit_residual], [fit_converged])[0]


def prepare_rows(samples: list, affines: list, landmarks_3d: list, label_sources: list, fit_residuals: list,
                 fit_converged: list) -> list[dict]:
    """:func:`prepare_row` of many samples, the landmark arithmetic done once
    for all (``affines`` 2x3 each, ``landmarks_3d`` ``(68, 3)`` source pixels
    each; the same values as one sample at a time)."""
    if not samples:
        return []
    A = np.stack([np.asarray(a, np.float64) for a in affines])                       # (B, 2, 3)
    lm2 = _affine_rows(A, np.stack([np.asarray(s.landmarks_2d, np.float64) for s in samples]))
    lm3 = _affine_rows(A, np.stack([np.asarray(p, np.float64) for p in landmarks_3d]))
    lm2, lm3 = lm2.astype(np.float32), lm3.astype(np.float32)
    rows = []
    for i, s in enumerate(samples):
        pose = np.asarray(s.pose_para, np.float64) if s.pose_para is not None else np.full(7, np.nan)
        yaw = s.extra["yaw_deg"] if "yaw_deg" in s.extra else float(camera.yaw_degrees(pose))
        rows.append({
            "landmarks_2d": lm2[i],
            "landmarks_3d": lm3[i],
            "pose_para": pose.astype(np.float32),
            "shape_para": np.asarray(s.shape_para, np.float32),
            "exp_para": np.asarray(s.exp_para, np.float32),
            "crop_affine": A[i],
            "yaw": np.float32(yaw),
            "name": s.name,
            "subset": s.subset,
            "flipped": bool(s.flipped),
            "label_source": label_sources[i],
            "fit_residual": np.float32(fit_residuals[i]),
            "fit_converged": bool(fit_converged[i]),
        })
    return rows


def _affine_rows(A: np.ndarray, P: np.ndarray) -> np.ndarray:
    """:func:`~dhm_data.geometry.crop.apply_affine` of ``(B, N, 2+)`` points
    with ``(B, 2, 3)`` affines, elementwise (the 2x2 products written out)."""
    out = P.copy()
    x, y = P[..., 0], P[..., 1]
    out[..., 0] = x * A[:, 0, 0, None] + y * A[:, 0, 1, None] + A[:, 0, 2, None]
    out[..., 1] = x * A[:, 1, 0, None] + y * A[:, 1, 1, None] + A[:, 1, 2, None]
    if P.shape[-1] > 2:
        out[..., 2:] *= np.sqrt(np.abs(np.linalg.det(A[:, :, :2])))[:, None, None]
    return out


def mean_shape_dhm(model: MorphableModel, config: PrepareConfig) -> np.ndarray:
    """The initialisation DHM: the model's mean landmarks, frontal
    (Pose_Para = 0 rotation), cropped with the build's crop rule."""
    mean = model.reconstruct()[: model.landmark_indices.size]
    pts = camera.model_to_image(mean, np.array([0, 0, 0, 0, 0, 0, 1.0]), 0)
    valid = np.isfinite(pts).all(axis=1)
    A = unsnapped_crop_affine(pts[valid], config.crop_size, config.margin)  # model units: no pixel snapping
    return render_dhm(apply_affine(A, pts), config.crop_size, config.sigma)

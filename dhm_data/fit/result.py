"""The result of a fit (:class:`FitResult`) and its residuals: the NME of
:mod:`dhm_data.geometry.landmark_error` (mean 2D point error over ``sqrt(w
h)`` of the observed landmarks' box, as 3DDFA evaluates) and the mean error
in pixels."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from dhm_data.geometry import camera
from dhm_data.geometry.landmark_error import nme_and_mean_error

__all__ = ["FitResult", "fit_residuals"]


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


def fit_residuals(fitted: np.ndarray, observed: np.ndarray, valid: np.ndarray):
    """Residuals of fits: ``(NME (B,), mean px error (B,))`` over the points
    ``valid`` ``(B, 68)`` (:mod:`dhm_data.geometry.landmark_error`);
    ``fitted`` ``(B, 68, >=2)``, ``observed`` ``(B, 68, 2)`` pixels.  NaN
    where an image has no valid point."""
    used = np.where(valid[..., None], np.asarray(fitted, np.float64)[..., :2], np.nan)
    return nme_and_mean_error(used, observed)

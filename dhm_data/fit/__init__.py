"""Fitting morphable-model identity, expression and pose to 2D (and 3D)
landmarks, batched, eos-style: one algorithm per module, each citing its
source, and a driver that strings them together.

* :mod:`.config` -- :class:`FitConfig` (the one check of ``[fit]`` options,
  the option help of ``fit-bfm``) and the jaw mode by kind of label;
* :mod:`.camera_estimation` -- affine camera (Hartley normalisation, H&Z Alg.
  7.2), its SVD projection to a scaled orthographic camera, Umeyama;
* :mod:`.model_rows` -- the model rows a fit needs, prepared once per model;
* :mod:`.linear` -- the regularised identity / expression solves;
* :mod:`.gauss_newton` -- the joint damped Gauss-Newton step and the
  convergence test;
* :mod:`.contour` -- landmark marching of the jaw (the rule:
  :mod:`dhm_data.geometry.contour`) and the fixed-jaw fallback weights;
* :mod:`.driver` -- :func:`fit` with the two iteration strategies
  (``gauss_newton_iterations``, ``alternating_iterations``);
* :mod:`.result` -- :class:`FitResult` and the NME; :mod:`.result_file` reads
  and writes the fit results.

May import: :mod:`dhm_data.errors`, :mod:`dhm_data.atomic`,
:mod:`dhm_data.geometry`, :mod:`dhm_data.models`.
"""

from dhm_data.fit.config import FitConfig, jaw_for_labels
from dhm_data.fit.driver import fit, posed_model_landmarks
from dhm_data.fit.result import FitResult

__all__ = ["FitConfig", "FitResult", "fit", "posed_model_landmarks", "jaw_for_labels"]

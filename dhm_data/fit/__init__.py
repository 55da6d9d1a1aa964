"""Fitting morphable-model identity, expression and pose to 2D (and 3D)
landmarks, batched, eos-style: one algorithm per module, each citing its
source, and a driver that strings them together.  :mod:`.result_file` reads
and writes the fit results.

May import: :mod:`dhm_data.errors`, :mod:`dhm_data.atomic`,
:mod:`dhm_data.geometry`, :mod:`dhm_data.models`.
"""

from dhm_data.fit.fitting import FitConfig, FitResult, fit, posed_model_landmarks  # noqa: E402

__all__ = ["FitConfig", "FitResult", "fit", "posed_model_landmarks"]

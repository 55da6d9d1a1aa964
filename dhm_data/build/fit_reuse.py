"""Fit reuse for ``dhm-data fit-bfm --landmarks``: a rerun with the same
input skips the work.

:func:`fit_input_fingerprint` is the fingerprint of one fit's input (the
landmark arrays, the image heights, the fit settings and the model), through
:func:`dhm_data.build.runner.fingerprint` (the one fingerprint function);
the fit file records it as ``input_fingerprint``.  :func:`reusable_fit`
returns the earlier result file's contents when it holds the fit of that
same input, None otherwise (no file, another input, or a file that cannot
be read: then the fit is redone and the file rewritten).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dhm_data.build.runner import fingerprint
from dhm_data.errors import FitFileError
from dhm_data.fit import FitConfig
from dhm_data.fit.result_file import read_fits
from dhm_data.models.morphable import MorphableModel


def fit_input_fingerprint(landmarks: np.ndarray, landmarks_3d: np.ndarray | None, image_height: np.ndarray,
                          config: FitConfig, model: MorphableModel) -> str:
    """sha256 (hex) of ``landmarks`` ``(B, 68, 2)``, ``landmarks_3d``
    ``(B, 68, 3)`` or None, ``image_height`` ``(B,)`` (each its shape and
    bytes), the fit settings and the model's name and source."""
    params = {"config": config.to_dict(), "model": model.name, "source": model.source}
    return fingerprint(params, arrays=[landmarks, landmarks_3d, image_height])


def reusable_fit(out, input_fingerprint: str) -> dict | None:
    """The contents of the fit file ``out`` (:func:`dhm_data.fit.result_file.read_fits`)
    when it records ``input_fingerprint``; None when there is nothing to reuse."""
    if not Path(out).is_file():
        return None
    try:
        old = read_fits(out)
    except FitFileError:
        return None
    return old if str(old.get("input_fingerprint", "")) == input_fingerprint else None

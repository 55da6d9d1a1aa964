"""Reading the LS3D-W ``.t7`` landmark files (also AFLW2000-3D's re-annotation).

Each holds a Torch7 FloatTensor 68x2 of 0-based pixel coordinates; anything
else -- another tensor type, a table, a wrong shape, NaN/inf, a damaged file --
is a :class:`DatasetError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DatasetError


def read_landmarks_t7(path: Path) -> np.ndarray:
    """``(68, 2)`` float64 landmarks, 0-based pixels, from a ``.t7`` file."""
    from ..t7 import read_t7

    try:
        lm = np.asarray(read_t7(path), np.float64)
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"{path}: cannot read as a Torch7 tensor ({type(e).__name__}: {e})") from e
    if lm.shape != (68, 2):
        raise DatasetError(f"{path}: landmark tensor has shape {lm.shape}, expected (68, 2)")
    if not np.all(np.isfinite(lm)):
        raise DatasetError(f"{path}: landmark tensor holds {int(np.sum(~np.isfinite(lm)))} NaN/inf values")
    return lm

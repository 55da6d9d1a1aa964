"""The 68-point iBUG / Multi-PIE markup: groups and the left-right mirror.

Indices are 0-based.  "Left"/"right" below are in the image of a frontal
face (image-left = the subject's right):

- jaw 0-16 (0 = image-left end), eyebrows 17-21 (image-left) and 22-26,
- nose bridge 27-30, nostrils 31-35, eyes 36-41 (image-left) and 42-47
  (each clockwise from the outer corner: 36 outer, 39 inner; 45 outer,
  42 inner), outer lip 48-59 (48 and 54 the corners), inner lip 60-67
  (60 and 64 the corners).

``MIRROR_68[i]`` is the landmark that plays the role of ``i`` after a
horizontal mirror: mirrored landmarks are ``L[MIRROR_68]`` with x reflected.
It is an involution (``MIRROR_68[MIRROR_68] == arange(68)``).
"""

from __future__ import annotations

import numpy as np

from dhm_data.errors import InputError

JAW = slice(0, 17)
RIGHT_BROW = slice(17, 22)   # image-left
LEFT_BROW = slice(22, 27)
NOSE_BRIDGE = slice(27, 31)
NOSTRILS = slice(31, 36)
RIGHT_EYE = slice(36, 42)    # image-left
LEFT_EYE = slice(42, 48)
OUTER_LIP = slice(48, 60)
INNER_LIP = slice(60, 68)


def _mirror() -> np.ndarray:
    pairs = (
        [(i, 16 - i) for i in range(8)]                                          # jaw, 8 = chin
        + [(17, 26), (18, 25), (19, 24), (20, 23), (21, 22)]                      # brows
        + [(31, 35), (32, 34)]                                                    # nostrils, 33 = tip
        + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]            # eyes
        + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]                      # outer lip, 51, 57 centre
        + [(60, 64), (61, 63), (65, 67)]                                          # inner lip, 62, 66 centre
    )
    m = np.arange(68)
    for a, b in pairs:
        m[a], m[b] = b, a
    m.setflags(write=False)
    return m


#: Mirror permutation of the 68 iBUG landmarks (read-only int array).
MIRROR_68: np.ndarray = _mirror()

#: Landmarks on the symmetry axis (their own mirror).
CENTRE_68: np.ndarray = np.flatnonzero(MIRROR_68 == np.arange(68))


def mirror_landmarks(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Horizontally mirror ``(..., 68, D)`` landmarks of an ``size``-wide crop.

    x (column 0, 0-based crop pixels) becomes ``size - 1 - x`` and the points
    are re-labelled with :data:`MIRROR_68`; other columns (y, z) are kept.
    """
    L = np.asarray(landmarks)
    out = L[..., MIRROR_68, :].copy()
    out[..., 0] = (size - 1) - out[..., 0]
    return out


#: The landmark-array shapes every command and library call accepts (N images;
#: rows of points or the 3DDFA ``pts68`` layout of columns; z optional).
ACCEPTED_SHAPES = ("(N, 68, 2)", "(N, 2, 68)", "(N, 68, 3)", "(N, 3, 68)")
ACCEPTED_SHAPES_TEXT = "accepted: " + ", ".join(ACCEPTED_SHAPES) + " (N images, 68 points, x, y[, z] pixels)"


def landmark_array(points, what: str = "landmarks", *, dims: int | None = None, error: type = None) -> np.ndarray:
    """Bring a stack of 68-point landmarks to rows: ``(N, 68, D)`` float64.

    Accepted shapes (:data:`ACCEPTED_SHAPES`): ``(N, 68, 2)``, ``(N, 2, 68)``,
    ``(N, 68, 3)`` and ``(N, 3, 68)``; the column layouts are transposed.
    ``dims=2`` drops a z column, ``dims=3`` requires one, ``None`` keeps what
    was given.  NaN / inf values are kept (callers decide what they mean).

    Raises ``error`` (default :class:`dhm_data.errors.InputError`) naming
    ``what``, the dtype or shape found, and every accepted shape.
    """
    error = error or InputError
    a = np.asarray(points)
    if a.dtype.kind not in "fiu":
        raise error(f"{what}: expected a numeric array, found dtype {a.dtype}; {ACCEPTED_SHAPES_TEXT}")
    if a.ndim == 3 and a.shape[1] == 68 and a.shape[2] in (2, 3):
        rows = a
    elif a.ndim == 3 and a.shape[2] == 68 and a.shape[1] in (2, 3):
        rows = np.swapaxes(a, 1, 2)
    else:
        hint = ""
        if a.ndim == 3 and 68 not in a.shape[1:]:
            hint = " (not 68 landmarks)"
        elif a.ndim == 2 and a.shape[0] == 68:
            hint = " (one face: add the leading N axis, e.g. points[None])"
        raise error(f"{what}: found {a.shape}{hint}; {ACCEPTED_SHAPES_TEXT}")
    if dims == 3 and rows.shape[2] != 3:
        raise error(f"{what}: found {a.shape} without z, this needs 3D landmarks (N, 68, 3) or (N, 3, 68); "
                    f"{ACCEPTED_SHAPES_TEXT}")
    if dims == 2:
        rows = rows[:, :, :2]
    return np.ascontiguousarray(rows, dtype=np.float64)

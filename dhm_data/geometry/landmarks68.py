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

"""The jaw contour rule ("landmark marching"): which vertex of a candidate
line each of the 17 jaw landmarks takes for a given pose.  The one place of
this rule: the fitter (:mod:`dhm_data.fit.contour`) and the synthetic label
writer (:func:`dhm_data.synth.march_landmarks`) both call
:func:`march_jaw`, so a fit reproduces the synthetic labels.

Source: Zhu, Lei, Liu, Shi and Li, "Face alignment across large poses: a 3D
solution" (CVPR 2016), section 4.1 and the 300W-LP synthesis of 3DDFA: a jaw
landmark of a turned face is not a fixed vertex but the vertex of its
horizontal "parallel" of the mesh that lies on the visible silhouette, i.e.
the extreme one across the image.  For models whose contour is one list per
face side shared by eight landmarks (the Surrey Face Model's
``sfm_model_contours.json``), eos matches each observed landmark to the
nearest projected vertex of the list instead (eos
``get_nearest_contour_correspondences``, patrikhuber/eos:
include/eos/fitting/contour_correspondence.hpp).

Conventions: jaw landmarks are iBUG 68 points 0..16; 0..7 lie on the
image-left side of a frontal face (the person's right), 9..16 on the
image-right, 8 is the chin.  Positions are *posed* model coordinates with y
up (``R @ S`` rows x, y, or image pixels after :func:`dhm_data.geometry.camera.image_to_model_frame`).
"""

from __future__ import annotations

import numpy as np

#: iBUG 68 indices of the jaw line.
JAW = np.arange(17)
CHIN = 8

__all__ = ["JAW", "CHIN", "march_jaw"]


def march_jaw(posed_lines, shared=None, observed=None, valid=None) -> np.ndarray:
    """Index into each candidate line of the vertex each jaw landmark takes.

    Args:
        posed_lines: 17 arrays ``(B, L_j, 2)`` (x, y with y up; any common
            unit): the candidate vertices of jaw landmark ``j`` posed by the
            current rotation (and, for ``observed``, scale and translation
            into the observation frame).
        shared: ``(17,)`` bool, the line is one list shared by several
            landmarks (matched to the observation); ``None`` = none.
        observed: ``(B, 17, 2)`` observed jaw landmarks in the frame of
            ``posed_lines``, or ``None``.
        valid: ``(B, 17)`` bool, the observation exists (NaN-free).

    Returns:
        ``(B, 17)`` int64, position within line ``j``.  Own lines: the
        smallest x for ``j < 8``, the largest for ``j > 8``, the smallest y
        (lowest) for the chin line.  Shared lines with an observation: the
        vertex nearest to it; without one the extreme rule applies.
    """
    B = posed_lines[0].shape[0]
    out = np.zeros((B, len(posed_lines)), np.int64)
    for j, posed in enumerate(posed_lines):
        if j < CHIN:
            k = np.argmin(posed[..., 0], axis=1)
        elif j > CHIN:
            k = np.argmax(posed[..., 0], axis=1)
        else:
            k = np.argmin(posed[..., 1], axis=1)
        if shared is not None and shared[j] and observed is not None:
            k_near = np.argmin(((posed - observed[:, j, None, :2]) ** 2).sum(-1), axis=1)
            k = np.where(valid[:, j], k_near, k)
        out[:, j] = k
    return out

"""Pose and camera conventions of 300W-LP / AFLW2000-3D (3DDFA's MATLAB code).

This is the only module that converts between pose parameterisations, projects
model points into images or flips between 1-based and 0-based pixels.

Conventions (docs/conventions.md section 4):

* ``Pose_Para = [pitch, yaw, roll, tx, ty, tz, s]``, angles in radians.
* ``R = Rx(pitch) @ Ry(yaw) @ Rz(roll)`` where each elementary matrix is the
  transpose of the usual right-handed rotation, e.g.
  ``Ry = [[c, 0, -s], [0, 1, 0], [s, 0, c]]``.
* A model point ``S`` (model units, column vector) maps to
  ``s * R @ S + t``; the image is an orthographic view of that,
  with the vertical axis flipped: ``y_img = h + 1 - y`` in **1-based** pixels
  (the MATLAB convention).  ``z`` is kept as transformed, no offset.
* dhm-data works in **0-based** pixel coordinates everywhere after reading: the
  centre of the top-left pixel is (0, 0).  ``one_based_to_zero_based`` is the
  one place that subtracts 1.

Arrays of points are ``(..., N, 3)`` (or ``(..., N, 2)``) rows, not columns.
"""

from __future__ import annotations

import numpy as np

from dhm_data.errors import InputError

__all__ = [
    "rotation_from_angles",
    "angles_from_rotation",
    "pose_para_to_srt",
    "srt_to_pose_para",
    "transform_points",
    "model_to_image",
    "image_to_model_frame",
    "one_based_to_zero_based",
    "zero_based_to_one_based",
    "yaw_degrees",
]


def rotation_from_angles(pitch, yaw, roll) -> np.ndarray:
    """``R = Rx(pitch) Ry(yaw) Rz(roll)`` in the 300W-LP convention.

    Angles in radians, scalars or arrays of one shape ``(...)``; returns
    ``(..., 3, 3)`` float64.
    """
    pitch, yaw, roll = np.broadcast_arrays(
        np.asarray(pitch, np.float64), np.asarray(yaw, np.float64), np.asarray(roll, np.float64)
    )
    cp, sp = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    cr, sr = np.cos(roll), np.sin(roll)
    # Product Rx @ Ry @ Rz written out (Rx=[[1,0,0],[0,cp,sp],[0,-sp,cp]],
    # Ry=[[cy,0,-sy],[0,1,0],[sy,0,cy]], Rz=[[cr,sr,0],[-sr,cr,0],[0,0,1]]).
    R = np.empty(pitch.shape + (3, 3))
    R[..., 0, 0] = cy * cr
    R[..., 0, 1] = cy * sr
    R[..., 0, 2] = -sy
    R[..., 1, 0] = sp * sy * cr - cp * sr
    R[..., 1, 1] = sp * sy * sr + cp * cr
    R[..., 1, 2] = sp * cy
    R[..., 2, 0] = cp * sy * cr + sp * sr
    R[..., 2, 1] = cp * sy * sr - sp * cr
    R[..., 2, 2] = cp * cy
    return R


def angles_from_rotation(R: np.ndarray) -> np.ndarray:
    """Exact inverse of :func:`rotation_from_angles`.

    ``R`` is ``(..., 3, 3)``; returns ``(..., 3)`` = (pitch, yaw, roll) in
    radians with yaw in [-pi/2, pi/2]:
    ``yaw = asin(-R[0,2])``, ``pitch = atan2(R[1,2], R[2,2])``,
    ``roll = atan2(R[0,1], R[0,0])``.
    """
    R = np.asarray(R, np.float64)
    yaw = np.arcsin(np.clip(-R[..., 0, 2], -1.0, 1.0))
    pitch = np.arctan2(R[..., 1, 2], R[..., 2, 2])
    roll = np.arctan2(R[..., 0, 1], R[..., 0, 0])
    return np.stack([pitch, yaw, roll], axis=-1)


def pose_para_to_srt(pose_para: np.ndarray):
    """Split ``Pose_Para`` ``(..., 7)`` into scale ``(...)``, rotation
    ``(..., 3, 3)`` and translation ``(..., 3)`` (image units, before the
    vertical flip)."""
    p = np.asarray(pose_para, np.float64)
    if p.shape[-1] != 7:
        raise InputError(f"Pose_Para must have 7 values [pitch, yaw, roll, tx, ty, tz, s], got shape {p.shape}")
    R = rotation_from_angles(p[..., 0], p[..., 1], p[..., 2])
    return p[..., 6], R, p[..., 3:6]


def srt_to_pose_para(s, R, t) -> np.ndarray:
    """Inverse of :func:`pose_para_to_srt`: returns ``(..., 7)`` float64."""
    angles = angles_from_rotation(R)
    s = np.asarray(s, np.float64)
    t = np.asarray(t, np.float64)
    return np.concatenate([angles, t, s[..., None]], axis=-1)


def transform_points(points: np.ndarray, pose_para: np.ndarray) -> np.ndarray:
    """``s * R @ S + t`` for row points ``(..., N, 3)`` and ``Pose_Para (..., 7)``."""
    s, R, t = pose_para_to_srt(pose_para)
    P = np.asarray(points, np.float64)
    return s[..., None, None] * np.einsum("...ij,...nj->...ni", R, P) + t[..., None, :]


def model_to_image(points: np.ndarray, pose_para: np.ndarray, image_height) -> np.ndarray:
    """Pose model points and project them into the image, 0-based pixels.

    ``points`` ``(..., N, 3)`` in model units, ``pose_para`` ``(..., 7)``,
    ``image_height`` h in pixels (scalar or ``(...)``).  Returns ``(..., N, 3)``:
    x and y in 0-based pixel coordinates, z the transformed depth (pixel units,
    larger = closer to the camera), exactly ``pt3d_68`` of AFLW2000-3D minus 1
    in x and y.
    """
    T = transform_points(points, pose_para)
    h = np.asarray(image_height, np.float64)[..., None]
    T[..., 1] = h + 1.0 - T[..., 1]  # 1-based MATLAB image rows
    return one_based_to_zero_based(T)


def image_to_model_frame(points_image: np.ndarray, image_height) -> np.ndarray:
    """Undo the vertical flip and 0-based shift of :func:`model_to_image`.

    Returns the posed points ``s R S + t`` (``(..., N, 3)`` or ``(..., N, 2)``)
    from 0-based image points; the inverse used by fitting.
    """
    P = zero_based_to_one_based(points_image)
    h = np.asarray(image_height, np.float64)[..., None]
    P[..., 1] = h + 1.0 - P[..., 1]
    return P


def one_based_to_zero_based(points: np.ndarray) -> np.ndarray:
    """Subtract 1 from x and y (columns 0 and 1); z, if present, is unchanged.
    Returns a new float64 array."""
    P = np.array(points, np.float64, copy=True)
    P[..., :2] -= 1.0
    return P


def zero_based_to_one_based(points: np.ndarray) -> np.ndarray:
    """Add 1 to x and y (columns 0 and 1); returns a new float64 array."""
    P = np.array(points, np.float64, copy=True)
    P[..., :2] += 1.0
    return P


def yaw_degrees(pose_para: np.ndarray) -> np.ndarray:
    """Signed yaw ``Pose_Para[1]`` in degrees, ``(...)``."""
    return np.degrees(np.asarray(pose_para, np.float64)[..., 1])

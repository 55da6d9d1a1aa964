"""Draw a face-like picture of a posed morphable-model mesh (for synthetic data).

Not a photorealistic renderer: its job is that every facial feature sits
exactly where the synthetic labels say, so that crops, landmarks and DHMs can
be checked by eye.  Pure numpy + OpenCV drawing, seeded, deterministic.

* Background: smooth coloured noise plus a few random shapes (``background``).
* Face: the mesh's camera-facing triangles, flat Lambertian-shaded skin,
  drawn back to front (painter's algorithm) with sub-pixel vertex positions.
* Features, drawn at the projected **landmark vertices** and interleaved with
  the triangles by depth (a feature goes after every triangle less than
  ~8 mm in front of its foremost vertex, so the nose still hides the far eye
  at large yaw): brows
  (dark polylines 17-21, 22-26), eyes (white polygon 36-41 / 42-47, dark iris
  disc at the eye centre, dark lid outline), nostrils (dark ellipses between
  31/33 and 33/35), lips (red polygon 48-59) and the mouth opening (dark
  polygon 60-67).  A feature is drawn only where its landmark vertices face
  the camera (mean vertex normal within
  ~78 degrees of the viewing direction).

Coordinates are 0-based pixels (x right, y down) with z towards the camera,
as returned by :func:`dhm_data.geometry.camera.model_to_image`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SHIFT = 4  # OpenCV fixed-point bits: vertex positions to 1/16 pixel
_ONE = 1 << SHIFT

#: RGB colours of the features (the tests look for them)
BROW_RGB = (45, 30, 20)
SCLERA_RGB = (240, 240, 235)
IRIS_RGB = (25, 20, 15)
LID_RGB = (60, 35, 30)
NOSTRIL_RGB = (50, 20, 15)
LIP_RGB = (175, 45, 55)
MOUTH_RGB = (60, 10, 15)


@dataclass(frozen=True)
class Style:
    """Per-photo appearance (drawn once per source photo, shared by its pose
    augmentations): skin RGB (0-255 floats), unit light direction ``(3,)`` in
    the image frame (x right, y down, z towards the camera), ambient share,
    iris RGB."""

    skin: tuple
    light: tuple
    ambient: float
    iris: tuple = IRIS_RGB

    @staticmethod
    def random(rng: np.random.Generator) -> "Style":
        skin = np.array([225, 180, 150]) * rng.uniform(0.55, 1.05) + rng.uniform(-12, 12, 3)
        az, el = rng.uniform(-0.8, 0.8), rng.uniform(-0.6, 0.3)
        light = np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])
        iris = tuple(float(v) for v in np.array(IRIS_RGB) + rng.integers(0, 40, 3))
        return Style(tuple(float(v) for v in np.clip(skin, 60, 250)), tuple(float(v) for v in light), float(rng.uniform(0.35, 0.55)), iris)


def background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """``(h, w, 3)`` uint8 RGB: smooth colour noise, a gradient and random shapes."""
    hh, hw = (h + 1) // 2, (w + 1) // 2  # noise is made at half resolution, then upsampled
    small = rng.uniform(30, 220, (6, 6, 3)).astype(np.float32)
    img = cv2.resize(small, (hw, hh), interpolation=cv2.INTER_CUBIC)
    img += cv2.resize(rng.normal(0, 12, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32), (hw, hh), interpolation=cv2.INTER_LINEAR)
    img += np.linspace(-20, 20, hh, dtype=np.float32)[:, None, None]
    img = cv2.resize(np.clip(img, 0, 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    for _ in range(int(rng.integers(3, 8))):
        colour = tuple(int(c) for c in rng.integers(20, 236, 3))
        if rng.random() < 0.5:
            p = rng.integers(0, [w, h], 2)
            q = p + rng.integers(10, max(11, min(h, w) // 3), 2)
            cv2.rectangle(img, tuple(int(v) for v in p), tuple(int(v) for v in q), colour, -1)
        else:
            c = rng.integers(0, [w, h], 2)
            cv2.circle(img, tuple(int(v) for v in c), int(rng.integers(5, max(6, min(h, w) // 6))), colour, -1)
    return img


def vertex_normals(verts: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals ``(V, 3)`` of posed vertices in the
    image frame (x right, y down, z towards the camera); triangles are
    counter-clockwise seen from the camera in the model frame, which the
    vertical image flip turns clockwise, hence the sign."""
    a, b, c = verts[triangles[:, 0]], verts[triangles[:, 1]], verts[triangles[:, 2]]
    fn = -np.cross(b - a, c - a)
    n = np.zeros_like(verts)
    for k in range(3):
        np.add.at(n, triangles[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def _fixed(p: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(p, np.float64)[..., :2] * _ONE).astype(np.int32)


def render_face(
    h: int,
    w: int,
    verts: np.ndarray,
    triangles: np.ndarray,
    landmark_vertices: np.ndarray,
    style: Style,
    bg: np.ndarray,
) -> np.ndarray:
    """Draw the posed mesh and its features over ``bg``.

    Args:
        h, w: image size in pixels.
        verts: ``(V, 3)`` posed vertices, 0-based pixels x, y and depth z
            (towards the camera), from :func:`dhm_data.geometry.camera.model_to_image`.
        triangles: ``(T, 3)`` vertex indices.
        landmark_vertices: ``(68,)`` vertex index of each iBUG landmark (the
            fixed 3D landmarks; features are drawn at these vertices).
        style: colours and light.
        bg: ``(h, w, 3)`` uint8 RGB background (not modified).
    Returns:
        ``(h, w, 3)`` uint8 RGB image.
    """
    img = np.ascontiguousarray(bg.copy())
    fn = vertex_normals(verts, triangles)
    a, b, c = verts[triangles[:, 0]], verts[triangles[:, 1]], verts[triangles[:, 2]]
    tn = -np.cross(b - a, c - a)
    tn /= np.maximum(np.linalg.norm(tn, axis=1, keepdims=True), 1e-12)
    front = tn[:, 2] > 0
    light = np.asarray(style.light, np.float64)
    shade = style.ambient + (1 - style.ambient) * np.clip(tn @ light, 0, 1)
    skin = np.asarray(style.skin, np.float64)
    colours = np.clip(shade[:, None] * skin[None, :], 0, 255).astype(np.int32)
    depth = (a[:, 2] + b[:, 2] + c[:, 2]) / 3
    pts = _fixed(verts)

    L = np.asarray(landmark_vertices)
    P = verts[L]
    N = fn[L]
    scale = float(np.linalg.norm(P[16, :2] - P[0, :2]) + np.linalg.norm(P[8, :2] - P[27, :2])) / 2 + 1e-6
    lift = 0.06 * scale  # features are drawn over skin up to ~8 mm in front of their foremost vertex

    def visible(idx, thr=0.2):
        n = N[list(idx)].mean(0)
        return bool(n[2] > thr * np.linalg.norm(n))

    features = [
        ("brow", list(range(17, 22))),
        ("brow", list(range(22, 27))),
        ("eye", list(range(36, 42))),
        ("eye", list(range(42, 48))),
        ("nostrils", [31, 32, 33, 34, 35]),
        ("lips", list(range(48, 60))),
    ]
    tri_ids = np.flatnonzero(front)
    tri_ids = tri_ids[np.argsort(depth[tri_ids], kind="stable")]
    tri_depth = depth[tri_ids]
    feats = sorted((float(P[idx, 2].max()) + lift, k) for k, (_, idx) in enumerate(features) if visible(idx))
    # each feature goes after the last triangle not in front of its depth
    cuts = np.searchsorted(tri_depth, [d for d, _ in feats], side="right")
    tri_pts = pts[triangles[tri_ids]]
    col = colours[tri_ids].tolist()
    ops = []
    start = 0
    for cut, (_, k) in zip(cuts, feats):
        ops.append((start, int(cut)))
        ops.append(k)
        start = int(cut)
    ops.append((start, len(tri_ids)))

    for op in ops:
        if isinstance(op, tuple):
            for t in range(*op):
                cv2.fillConvexPoly(img, tri_pts[t], col[t], cv2.LINE_8, SHIFT)
            continue
        name, idx = features[op]
        if name == "brow":
            th = max(2, int(round(0.03 * scale)))
            cv2.polylines(img, [_fixed(P[idx])], False, BROW_RGB, th, cv2.LINE_AA, SHIFT)
        elif name == "eye":
            poly = _fixed(P[idx])
            cv2.fillPoly(img, [poly], SCLERA_RGB, cv2.LINE_AA, SHIFT)
            centre = P[idx, :2].mean(0)
            opening = np.linalg.norm(P[idx[1], :2] - P[idx[5], :2]) + np.linalg.norm(P[idx[2], :2] - P[idx[4], :2])
            r = max(1.0, 0.45 * opening / 2 + 0.5)
            cv2.circle(img, tuple(int(v) for v in _fixed(centre)), int(round(r * _ONE)), style.iris, -1, cv2.LINE_AA, SHIFT)
            cv2.polylines(img, [poly], True, LID_RGB, max(1, int(round(0.008 * scale))), cv2.LINE_AA, SHIFT)
        elif name == "nostrils":
            r = max(1.0, 0.025 * scale)
            for q in (0.55 * P[31, :2] + 0.45 * P[33, :2], 0.55 * P[35, :2] + 0.45 * P[33, :2]):
                cv2.ellipse(img, tuple(int(v) for v in _fixed(q)), (int(r * 1.4 * _ONE), int(r * _ONE)), 0, 0, 360, NOSTRIL_RGB, -1, cv2.LINE_AA, SHIFT)
        elif name == "lips":
            cv2.fillPoly(img, [_fixed(P[48:60])], LIP_RGB, cv2.LINE_AA, SHIFT)
            inner = _fixed(P[60:68])
            cv2.fillPoly(img, [inner], MOUTH_RGB, cv2.LINE_AA, SHIFT)
            cv2.polylines(img, [inner], True, MOUTH_RGB, max(1, int(round(0.008 * scale))), cv2.LINE_AA, SHIFT)
    return img

"""Pictures of built samples: the crop with its landmarks beside its DHM."""

from __future__ import annotations

import cv2
import numpy as np

from dhm_data.atomic import atomic_path


def draw_landmarks(image: np.ndarray, landmarks_2d: np.ndarray, scale: int = 1, radius: int | None = None) -> np.ndarray:
    """``image`` ``(H, W, 3)`` uint8 RGB enlarged ``scale`` times (nearest
    neighbour) with the 68 landmarks ``(68, 2)`` (0-based source pixels)
    drawn as dots of ``radius`` pixels (default: ``scale``): jaw (0-16)
    green, inner points red; NaN points skipped."""
    h, w = image.shape[:2]
    big = cv2.resize(np.ascontiguousarray(image), (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    for i, (x, y) in enumerate(np.asarray(landmarks_2d, np.float64)):
        if not np.isfinite([x, y]).all():
            continue
        c = (0, 220, 0) if i < 17 else (230, 30, 30)
        centre = (int(round((x + 0.5) * scale - 0.5)), int(round((y + 0.5) * scale - 0.5)))
        cv2.circle(big, centre, radius or max(1, scale), c, -1, lineType=cv2.LINE_AA)
    return big


def sample_picture(image: np.ndarray, landmarks_2d: np.ndarray, dhm: np.ndarray, scale: int = 2) -> np.ndarray:
    """``(S*scale, 2*S*scale + gap, 3)`` uint8 RGB: left the crop with the 68
    landmarks (jaw green, inner points red), right the DHM with channels x, y, z
    shown as R, G, B (brightened by 1/max so sparse peaks are visible)."""
    S = image.shape[0]
    big = draw_landmarks(image, landmarks_2d, scale)
    d = np.asarray(dhm, np.float32)
    peak = float(d.max()) or 1.0
    d8 = np.clip(d / peak * 255.0, 0, 255).astype(np.uint8)
    d8 = cv2.dilate(d8, np.ones((2, 2), np.uint8))
    dbig = cv2.resize(d8, (S * scale, S * scale), interpolation=cv2.INTER_NEAREST)
    gap = np.full((S * scale, 8, 3), 255, np.uint8)
    return np.concatenate([big, gap, dbig], axis=1)


def save_png(path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())

"""Convention slips caught before they reach a paper.

Each check looks at aligned predictions and ground truth and returns warning sentences
(empty when the input looks right).  They compare the error as given with the error
under the suspected slip, so a correct input stays silent:

* 1-based pixels read as 0-based (or the reverse): the mean signed error is close to
  (+1, +1) px (or (-1, -1)) and removing it lowers the NME;
* another pixel frame (crop pixels of a build, a resized image): the NME is gross and a
  per-image scale and shift would bring it down by a factor of 3 or more;
* x and y swapped: swapping them halves the NME or better;
* pose angles in radians given as degrees or the reverse: re-reading them in the other
  unit halves the MAE or better.
"""

from __future__ import annotations

import numpy as np

from dhm_data.evaluation import metrics as m
from dhm_data.evaluation.pose import to_pose

ONE_PX_TOLERANCE = 0.35
GROSS_NME = 0.2


def _median_nme(p, g) -> float:
    return float(np.median(m.nme(p, g)))


def _similarity_aligned(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``p`` mapped per image by the scale and shift (no rotation) that best fit ``g``."""
    pc, gc = p.mean(axis=1, keepdims=True), g.mean(axis=1, keepdims=True)
    dp, dg = p - pc, g - gc
    s = (dp * dg).sum(axis=(1, 2)) / np.maximum((dp * dp).sum(axis=(1, 2)), 1e-12)
    return s[:, None, None] * dp + gc


def landmark_slips(pred, gt, one_based: bool = False) -> list[str]:
    """Warnings for ``pred`` ``(N, 68, >=2)`` against ``gt`` ``(N, 68, >=2)``, 0-based
    pixels both; rows holding NaN are ignored.  ``one_based``: whether the user
    declared the predictions 1-based (1 was subtracted already)."""
    p = np.asarray(pred, np.float64)[..., :2]
    g = np.asarray(gt, np.float64)[..., :2]
    ok = np.isfinite(p).all(axis=(1, 2))
    p, g = p[ok], g[ok]
    if len(p) == 0:
        return []
    out = []
    base = _median_nme(p, g)
    d = (p - g).reshape(-1, 2).mean(axis=0)
    for sign, fix in ((1, "give --one-based (or subtract 1)"), (-1, "drop --one-based" if one_based else
                                                                "add 1 to x and y: they may be 1-based pixels "
                                                                "converted twice")):
        if np.all(np.abs(d - sign) < ONE_PX_TOLERANCE) and _median_nme(p - sign, g) < base:
            kind = "1-based pixels read as 0-based" if sign == 1 else "0-based pixels read as 1-based"
            out.append(f"predictions look like {kind}: the mean signed error is ({d[0]:+.2f}, {d[1]:+.2f}) px; "
                       f"{fix}")
    swapped = _median_nme(p[..., ::-1], g)
    if base > 0.1 and swapped < 0.5 * base:
        out.append(f"x and y look swapped: swapping them brings the median NME from {100 * base:.1f}% to "
                   f"{100 * swapped:.1f}%; landmarks are (x, y) = (column, row)")
    if base > GROSS_NME:
        aligned = _median_nme(_similarity_aligned(p, g), g)
        if aligned < base / 3:
            out.append(f"predictions look like another pixel frame (crop pixels of a build, a resized image?): a "
                       f"per-image scale and shift would bring the median NME from {100 * base:.1f}% to "
                       f"{100 * aligned:.1f}%; map them to source pixels (--crop-coords with --build DIR)")
    return out


def pose_slips(values, pose_format: str, pose_para) -> list[str]:
    """Warnings for head poses ``values`` of ``pose_format`` against ``pose_para`` ``(N, >=3)`` radians."""
    v = np.asarray(values, np.float64)
    true = np.asarray(pose_para, np.float64)[:, :3]
    ok = np.isfinite(v.reshape(len(v), -1)).all(axis=1)
    if not ok.any():
        return []
    v, true = v[ok], true[ok]
    if pose_format == "rotvec-img2pose":
        norm = float(np.median(np.linalg.norm(v, axis=1)))
        if norm > np.pi:
            return [f"rotation vectors look like degrees: their median length is {norm:.1f} (> pi); they must be "
                    "radians"]
        return []
    other = {"pose_para": ("radians", "degrees", np.pi / 180), "ypr-deg": ("degrees", "radians", 180 / np.pi),
             "pyr-deg": ("degrees", "radians", 180 / np.pi)}
    if pose_format not in other:
        return []
    unit, alt, factor = other[pose_format]

    def mae(x):
        ang, _ = to_pose(x, pose_format)
        return float(np.nanmean(np.abs(np.degrees(ang - true))))

    given, reread = mae(v), mae(v * factor)
    if given > 5 and reread < 0.5 * given:
        return [f"pose angles look like {alt} given as {unit} (--pose-format {pose_format}): read as {alt} the "
                f"MAE would be {reread:.2f} instead of {given:.2f} degrees"]
    return []

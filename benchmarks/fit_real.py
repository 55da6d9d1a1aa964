"""Fitting on the 2,000 real AFLW2000-3D labels, per yaw bin, against the
dataset's own ``Pose_Para``.

    python benchmarks/fit_real.py [--gt ../shared/reference/aflw2000-3d-gt]
        [--models bfm68,sfm] [--reference ../shared/reference]

Input: ``AFLW2000-3D.pts68.npy`` (2000, 3, 68) = every file's ``pt3d_68``
(1-based x, y; z the depth) and ``AFLW2000-3D.pose_para.npy`` (2000, 7), both
in sorted file order (cleardusk/3DDFA test.configs, read from the release's
.mat files).  Labels are fitted with 2D only (x, y) and with z (``pt3d_68``'s
z as the 3D estimate), image height 450.  Models: the 68-row BFM subset
(``bfm68/``, 40 identity / 10 expression components of the BFM 2009 that
300W-LP uses) and the Surrey Face Model (``sfm/``, with its contour lists),
with the default jaw mode (``fixed``: ``pt3d_68`` are projections of fixed 3D
vertices) and, for the Surrey model, also ``--jaw silhouette``.

Per |yaw| bin of ``Pose_Para`` ([0, 30), [30, 60), [60, 90], and the faces
beyond 90 degrees apart): mean absolute yaw, pitch and roll error (degrees,
wrapped to +-180), mean and median geodesic rotation error (the angle of
``R_fit^T R_gt``, well defined where Euler angles are not), mean 2D NME of
the fitted landmarks against the labels (%, / sqrt(w h) of the label box, over
the points the model maps) and the number of flagged fits.  The fitted
``Pose_Para`` is in the dataset's own convention, so errors compare directly.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from dhm_data.evaluation.pose import geodesic_deg
from dhm_data.fit import FitConfig, fit
from dhm_data.geometry import camera, landmark_error
from dhm_data.models.formats import load_model

REPO = Path(__file__).resolve().parents[1]
H = 450
BINS = [("[0, 30)", 0, 30), ("[30, 60)", 30, 60), ("[60, 90]", 60, 90.0001), ("> 90", 90.0001, 1e9)]


def load_labels(gt: Path):
    """``(landmarks_2d (N, 68, 2) 0-based, landmarks_3d (N, 68, 3), pose_para (N, 7) float64)``."""
    pts = np.load(gt / "AFLW2000-3D.pts68.npy").astype(np.float64)
    pose = np.load(gt / "AFLW2000-3D.pose_para.npy").astype(np.float64)
    l3 = pts.transpose(0, 2, 1).copy()
    l3[..., :2] = camera.one_based_to_zero_based(l3[..., :2])
    return l3[..., :2].copy(), l3, pose


def wrap_deg(d):
    return (d + 180.0) % 360.0 - 180.0


def pose_errors(fitted, gt):
    """``(|yaw|, |pitch|, |roll|, geodesic)`` errors in degrees, each ``(N,)``."""
    e = np.abs(wrap_deg(np.degrees(fitted[:, :3] - gt[:, :3])))
    _, Rf, _ = camera.pose_para_to_srt(fitted)
    _, Rg, _ = camera.pose_para_to_srt(gt)
    return e[:, 1], e[:, 0], e[:, 2], geodesic_deg(Rf, Rg)


def nme(pred, gt, used):
    """Mean 2D error over the ``used`` points / sqrt(w h) of the whole label box, ``(N,)``."""
    return landmark_error.mean_error(pred[:, used, :2], gt[:, used]) / landmark_error.box_size(gt)


def summarise(result, pose_gt, lm, used):
    """Per-bin figures of one fit: list of dicts."""
    yaw_e, pitch_e, roll_e, geo = pose_errors(result.pose_para, pose_gt)
    n2 = nme(result.landmarks, lm, used)
    ay = np.abs(np.degrees(pose_gt[:, 1]))
    rows = []
    for name, lo, hi in BINS + [("all", 0, 1e9)]:
        m = (ay >= lo) & (ay < hi)
        if not m.any():
            continue
        rows.append({"bin": name, "n": int(m.sum()), "yaw": yaw_e[m].mean(), "yaw_median": np.median(yaw_e[m]),
                     "pitch": pitch_e[m].mean(), "roll": roll_e[m].mean(), "geo": geo[m].mean(),
                     "geo_median": np.median(geo[m]), "nme": 100 * np.nanmean(n2[m]),
                     "flagged": int(result.flagged[m].sum())})
    return rows


def print_table(title, rows, command):
    print(f"\n#### {title}\n\n`{command}`\n")
    print("| abs(yaw) bin | faces | yaw err | pitch err | roll err | rotation err (mean / median) | 2D NME % | flagged |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bin']} | {r['n']} | {r['yaw']:.2f} (median {r['yaw_median']:.2f}) | {r['pitch']:.2f} | "
              f"{r['roll']:.2f} | {r['geo']:.2f} / {r['geo_median']:.2f} | {r['nme']:.2f} | {r['flagged']} |")


def run(gt: Path, reference: Path, models: list[str]):
    lm, l3, pose = load_labels(gt)
    command = "python benchmarks/fit_real.py"
    print(f"# Fitting the {len(lm)} real AFLW2000-3D labels (pt3d_68) against Pose_Para; errors in degrees")
    for name in models:
        model = load_model(reference / name)
        used = np.flatnonzero(model.landmark_indices >= 0)
        jaws = ["fixed", "silhouette"] if model.contour_candidates is not None else ["fixed"]
        for jaw in jaws:
            if jaw == "silhouette":
                used_j = np.union1d(used, np.arange(17))
            else:
                used_j = used
            for with_z in (False, True):
                cfg = FitConfig(jaw=jaw)
                t0 = time.perf_counter()
                r = fit(lm, model, l3 if with_z else None, cfg, image_height=H)
                dt = time.perf_counter() - t0
                rows = summarise(r, pose, lm, used_j)
                label = f"{model.name}, jaw {jaw}{' (default)' if jaw == FitConfig().jaw else ''}, " \
                        f"{'2D + z' if with_z else '2D only'} ({len(used_j)} points; {len(lm) / dt:,.0f} fits/s)"
                print_table(label, rows, command)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", type=Path, default=REPO.parent / "shared" / "reference")
    ap.add_argument("--gt", type=Path, default=None, help="default: REFERENCE/aflw2000-3d-gt")
    ap.add_argument("--models", default="bfm68,sfm", help="comma-separated folders under REFERENCE")
    args = ap.parse_args()
    run(args.gt or args.reference / "aflw2000-3d-gt", args.reference, args.models.split(","))


if __name__ == "__main__":
    main()

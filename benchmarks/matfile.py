"""Reading the 300W-LP label .mat files: scipy.io.loadmat against load_mat.

    python benchmarks/matfile.py [-n 300] [--work /tmp/dhm-bench-matfile] [--rounds 5]

Generates a synthetic 300W-LP tree of N non-flipped samples (MATLAB-style
compressed v5 files, 2N label files plus N landmark files) if the work folder
does not hold one, then times, per file (best of --rounds passes over every
file, page cache warm):

* every variable: ``scipy.io.loadmat(p, mat_dtype=True)`` vs ``load_mat(p)``;
* the 3DMM labels only (Pose_Para, Shape_Para, Exp_Para): scipy with
  ``variable_names`` vs ``load_mat(p, names)``;
* ``pts_3d`` of the landmarks/*_pts.mat files, the same way;

and, when ../shared/reference is beside the repository, the real 300W-LP
and AFLW2000-3D sample files.  Prints microseconds per file and the ratio
scipy / load_mat.  Figures vary with the machine; compare the ratios.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import scipy.io
from _trees import synthetic_300wlp

from dhm_data.formats.matfile import load_mat

LABELS = ("Pose_Para", "Shape_Para", "Exp_Para")
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def per_file_us(fn, files, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for p in files:
            fn(p)
        best = min(best, time.perf_counter() - t)
    return best / len(files) * 1e6


def compare(title, files, names, rounds):
    files = list(files)
    ref = per_file_us(lambda p: scipy.io.loadmat(p, mat_dtype=True, variable_names=names), files, rounds)
    fast = per_file_us(lambda p: load_mat(p, names), files, rounds)
    print(f"{title:<48} {len(files):6d} files   scipy {ref:7.1f} us   load_mat {fast:6.1f} us   ratio {ref / fast:4.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=300, help="non-flipped samples of the synthetic tree")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dhm-bench-matfile"))
    ap.add_argument("--rounds", type=int, default=5, help="passes over the files; the best is reported")
    args = ap.parse_args()
    raw = synthetic_300wlp(args.work / "raw", args.n)
    mats = sorted(raw.rglob("*.mat"))
    pts = [p for p in mats if p.name.endswith("_pts.mat")]
    labels = [p for p in mats if not p.name.endswith("_pts.mat")]
    per_file_us(lambda p: p.read_bytes(), mats, 1)  # warm the page cache
    compare("synthetic 300W-LP labels, all variables", labels, None, args.rounds)
    compare("synthetic 300W-LP labels, Pose/Shape/Exp_Para", labels, LABELS, args.rounds)
    compare("synthetic 300W-LP labels, + pt2d", labels, LABELS + ("pt2d",), args.rounds)
    compare("synthetic landmarks/*_pts.mat, pts_3d", pts, ["pts_3d"], args.rounds)
    for folder in ("300w-lp-samples", "aflw2000-3d-samples"):
        real = sorted((REFERENCE / folder).glob("*.mat"))
        if real:  # few files: repeat them to time more than a few microseconds
            reps = max(1, 2000 // len(real))
            compare(f"real {folder}, all variables", real * reps, None, args.rounds)
            compare(f"real {folder}, Pose/Shape/Exp_Para", real * reps, LABELS, args.rounds)


if __name__ == "__main__":
    main()

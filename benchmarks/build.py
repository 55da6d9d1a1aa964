"""Build throughput against the physical floor (decoding the same JPEGs).

    python benchmarks/build.py [-n 2000] [--work /tmp/dhm-bench-build]

Generates a synthetic 300W-LP tree of N non-flipped samples (2N images with
the mirrors), builds it with 1 and 2 processes, times a bare decode of every
source JPEG, and prints samples/s and the ratio build time / decode time
(goal: under 1.5 for one process).  Figures vary with the machine; the ratio
measured in one run is what to compare.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from dhm_data.build import BuildRequest, run_build
from dhm_data.synth import synthesize


def decode_all(paths, flags=cv2.IMREAD_COLOR):
    t = time.perf_counter()
    for p in paths:
        cv2.imdecode(np.fromfile(p, np.uint8), flags)
    return time.perf_counter() - t


def _decode_part(paths):
    cv2.setNumThreads(1)
    return decode_all(paths)


def decode_all_parallel(paths, jobs):
    """Wall time of decoding ``paths`` split over ``jobs`` processes (pool
    started before the clock)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs) as pool:
        list(pool.map(_decode_part, [paths[:8]] * jobs))  # start and warm the workers
        t = time.perf_counter()
        list(pool.map(_decode_part, [paths[i::jobs] for i in range(jobs)]))
        return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000, help="non-flipped samples (the tree holds 2N images)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dhm-bench-build"))
    args = ap.parse_args()
    cv2.setNumThreads(1)
    raw = args.work / "raw"
    if not (raw / "SYNTHETIC.json").exists() and not (raw / "300W_LP").exists():
        shutil.rmtree(raw, ignore_errors=True)
        t = time.perf_counter()
        synthesize("300wlp", raw, args.n, seed=0)
        print(f"generated synthetic 300W-LP ({args.n} + mirrors) in {time.perf_counter() - t:.1f} s")
    jpgs = sorted(raw.rglob("*.jpg"))
    n = len(jpgs)
    decode_all(jpgs[:200])  # warm the page cache and the decoder
    t_decode = decode_all(jpgs)
    print(f"images: {n}")
    print(f"decode only (full 450x450, cv2, 1 thread): {n / t_decode:8.0f} images/s")
    t_decode2 = decode_all_parallel(jpgs, 2)
    print(f"decode only, 2 processes:                 {n / t_decode2:8.0f} images/s")
    rows = []
    for jobs in (1, 2):
        out = args.work / f"out-{jobs}"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        s = run_build(BuildRequest("300wlp", raw, out, None, jobs=jobs, progress=False), echo=lambda m: None)
        dt = time.perf_counter() - t
        written = sum(s["written"].values())
        rows.append((jobs, written, dt))
        print(f"build, {jobs} process(es): {written / dt:8.0f} samples/s  ({written} written, {s['rejected']} rejected, {dt:.2f} s)")
    (_, _, t1), (_, _, t2) = rows
    print(f"ratio build(1 process) / decode-only: {t1 / t_decode:.2f}   (goal < 1.5)")
    print(f"ratio build(2 processes) / decode-only(2 processes): {t2 / t_decode2:.2f}")
    print(f"scaling 2 processes vs 1: {t1 / t2:.2f}x")


if __name__ == "__main__":
    main()

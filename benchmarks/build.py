"""Build throughput against the physical floor (decoding the same JPEGs).

    python benchmarks/build.py [-n 2000] [--work /tmp/dhm-bench-build]

Generates a synthetic 300W-LP tree of N non-flipped samples (2N images with
the mirrors), builds it with 1 and 2 processes, times a bare decode of every
source JPEG with as many processes right before and right after each build,
and prints samples/s and the ratio build time / decode time (goal: under 1.5
for one process).  Figures vary with the machine; the ratio
measured in one run is what to compare.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
from _trees import synthetic_300wlp

from dhm_data.build.flow import BuildRequest, run_build
from dhm_data.build.runner import keep_freed_memory


def decode_all(paths, flags=cv2.IMREAD_COLOR):
    t = time.perf_counter()
    for p in paths:
        cv2.imdecode(np.fromfile(p, np.uint8), flags)
    return time.perf_counter() - t


def _decode_part(paths):
    cv2.setNumThreads(1)
    keep_freed_memory()  # the floor decodes with the allocator setting the build's workers use
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
    ap.add_argument("--repeat", type=int, default=3, help="builds per process count (the median ratio is reported)")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    keep_freed_memory()  # as the build's workers do: without it a decode maps fresh pages per image
    raw = synthetic_300wlp(args.work / "raw", args.n)
    jpgs = sorted(raw.rglob("*.jpg"))
    n = len(jpgs)
    decode_all(jpgs[:200])  # warm the page cache and the decoder
    print(f"images: {n}   (each build is bracketed by decode-only runs at the same parallelism: this")
    print("machine's speed drifts, and the ratio is taken against the mean of the two)")

    def floor(jobs):
        return decode_all(jpgs) if jobs == 1 else decode_all_parallel(jpgs, jobs)

    ratios = {}
    for jobs in (1, 2):
        for rep in range(args.repeat):
            out = args.work / f"out-{jobs}"
            shutil.rmtree(out, ignore_errors=True)
            before = floor(jobs)
            t = time.perf_counter()
            s = run_build(BuildRequest("300wlp", raw, out, None, jobs=jobs, progress=False), echo=lambda m: None)
            dt = time.perf_counter() - t
            after = floor(jobs)
            written = sum(s["written"].values())
            ratios.setdefault(jobs, []).append((dt / ((before + after) / 2), written / dt))
            print(f"{jobs} process(es), run {rep + 1}: decode only {n / before:6.0f} / {n / after:6.0f} images/s "
                  f"(before / after);  build {written / dt:6.0f} samples/s ({written} written, {s['rejected']} "
                  f"rejected, {dt:.2f} s);  ratio build / decode-only {ratios[jobs][-1][0]:.2f}")
    for jobs, rs in ratios.items():
        r = sorted(x for x, _ in rs)
        speed = sorted(v for _, v in rs)
        print(f"{jobs} process(es): median ratio build / decode-only {r[len(r) // 2]:.2f} (range {r[0]:.2f}-{r[-1]:.2f}), "
              f"median build {speed[len(speed) // 2]:.0f} samples/s" + ("   (goal < 1.5)" if jobs == 1 else ""))
    s1 = sorted(v for _, v in ratios[1])
    s2 = sorted(v for _, v in ratios[2])
    print(f"scaling of the build, 2 processes vs 1 (medians): {s2[len(s2) // 2] / s1[len(s1) // 2]:.2f}x")


if __name__ == "__main__":
    main()

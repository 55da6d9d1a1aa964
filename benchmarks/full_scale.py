"""Full-size rehearsal: a synthetic 300W-LP of the real size (or a fraction), built
with the default settings, with wall time, throughput, peak memory, disk and
loader figures.

    python benchmarks/full_scale.py                              # fractions 0.02 and 0.05
    python benchmarks/full_scale.py --fraction 1.0 --jobs 2      # the real size: 122,450 samples
    python benchmarks/full_scale.py --fraction 0.01 --fraction 0.04 --work /tmp/fs
    python benchmarks/full_scale.py --names ../shared/reference/300w-lp-names/300W_LP_filename_filtered.txt

``--names FILE`` synthesises exactly the samples a name list names (the real
release's 122,415 names with the list above) instead of fractions.

For each fraction f: ``round(61,225 f)`` non-flipped samples are synthesised
(``dhm-data synth 300wlp``; the ``_Flip`` mirrors double it, so f = 1 gives the
real 122,450), spread over the four subsets in the real proportions by the
synthesiser.  The tree is built by ``dhm-data build 300wlp`` (the shipped
pipeline: 224 px crops, margin 0.3, sigma 1, 1,000-sample shards, the
seed-paper split) in a child process, so its memory is its own:

* wall time and samples/s of the build (and the full-size time it projects);
* peak memory: the peak RSS (``VmHWM``) of the build's main process and of
  its largest worker, and the peak of the summed RSS of the whole process
  tree, sampled from ``/proc`` every 50 ms (forked workers share pages with the
  build process until they write them: the sum counts those twice).  (``getrusage(RUSAGE_SELF)`` of
  the build process is printed too, but Linux starts a child's ``ru_maxrss``
  at its parent's RSS at fork, so it is only an upper bound.)  It must not grow with the dataset: a
  worker holds one shard at a time, the main process only metadata;
* disk per sample: shard bytes / samples written, and the whole build folder;
* loader throughput on the result: ``ShardDataset`` + ``Loader`` over the
  train split, batch 64, shuffled, image + DHM (as stored, uint8) + landmarks +
  pose, with 0 and 2 worker processes.

Figures depend on the machine (the README records the ones measured on the
2-core CI machine); the memory ratio between the two sizes is what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from _trees import synthetic_300wlp

REAL_NON_FLIPPED = 61_225          # IBUG 1,786 + AFW 5,207 + LFPW 16,556 + HELEN 37,676
REAL_TOTAL = 2 * REAL_NON_FLIPPED  # with the _Flip mirrors: 122,450

# Runs in the child: the build, then its own peak RSS (getrusage, KiB on Linux) as a cross-check.
CHILD = """
import json, resource, sys, time
from pathlib import Path
from dhm_data.build.flow import BuildRequest, run_build
root, out, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = time.perf_counter()
s = run_build(BuildRequest("300wlp", Path(root), Path(out), None, jobs=jobs, progress=False), echo=lambda m: None)
wall = time.perf_counter() - t
print(json.dumps({"wall": wall, "written": sum(s["written"].values()), "rejected": s["rejected"],
                  "split": s["written"],
                  "self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def process_tree(pid: int) -> dict:
    """{pid: (rss bytes, peak rss bytes = VmHWM, command line)} of ``pid`` and
    all its descendants, from /proc."""
    parents = {}
    for st in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(st.parent.name)] = int(st.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    keep, frontier = {pid}, {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier and p not in keep}
        keep |= frontier
    out = {}
    for p in keep:
        try:
            status = Path(f"/proc/{p}/status").read_text()
            kib = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
                   if line.startswith(("VmRSS", "VmHWM"))}
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            out[p] = (kib.get("VmRSS", 0) * 1024, kib.get("VmHWM", 0) * 1024, cmd)
        except (OSError, ValueError, IndexError):
            continue
    return out


def build(root: Path, out: Path, jobs: int) -> dict:
    """Run the build in a child process; sample its process tree every 50 ms:
    peak summed RSS, and each process's own peak (VmHWM)."""
    shutil.rmtree(out, ignore_errors=True)
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(out), str(jobs)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    peak = {"tree": 0, "main": 0, "worker": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            procs = process_tree(p.pid)
            peak["tree"] = max(peak["tree"], sum(r for r, _, _ in procs.values()))
            for q, (_, hwm, _cmd) in procs.items():
                key = "main" if q == p.pid else "worker"  # forked workers share the build's command line
                if key:
                    peak[key] = max(peak[key], hwm)
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t = time.perf_counter()
    stdout, stderr = p.communicate()
    total = time.perf_counter() - t
    done.set()
    th.join()
    if p.returncode != 0:
        raise SystemExit(f"build failed:\n{stderr}")
    r = json.loads(stdout.strip().splitlines()[-1])
    r.update(process_wall=total, tree_peak=peak["tree"], main_hwm=peak["main"], worker_hwm=peak["worker"])
    return r


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in folder.rglob(pattern) if p.is_file())


def loader_rate(split_dir: Path, workers: int, max_batches: int = 200) -> float:
    from dhm_data.load import Loader, ShardDataset

    ds = ShardDataset(split_dir, fields=["image", "dhm", "landmarks_2d", "landmarks_3d", "pose_para"])
    loader = Loader(ds, batch_size=64, shuffle=True, seed=0, num_workers=workers, copy=False)
    try:
        it = iter(loader)
        next(it)  # start-up (worker processes) not timed
        n, t = 0, time.perf_counter()
        for b, batch in enumerate(it):
            n += len(batch["image"])
            if b + 2 >= max_batches:
                break
        return n / (time.perf_counter() - t)
    finally:
        loader.close()


def run(fraction: float, work: Path, jobs: int, names: list[str] | None = None) -> dict:
    """Synthesise (fraction of the real size, or exactly ``names``), build, load."""
    if names is not None:
        n = sum("_Flip/" not in name for name in names)
        fraction = n / REAL_NON_FLIPPED
    else:
        n = max(4, round(REAL_NON_FLIPPED * fraction))
    raw = synthetic_300wlp(work / f"raw-{n}", n, tag=f"[{fraction:g}] ", names=names, jobs=jobs)
    out = work / f"build-{n}"
    r = build(raw, out, jobs)
    shard_bytes = folder_bytes(out, "shard-*.h5")
    r.update(fraction=fraction, n=n, shard_bytes=shard_bytes, folder_bytes=folder_bytes(out),
             raw_bytes=folder_bytes(raw))
    print(f"[{fraction:g}] built {r['written']:,} samples ({r['split']}) in {r['wall']:.1f} s", flush=True)
    os.sync()
    for w in (0, 2):
        r[f"loader_{w}"] = loader_rate(out / "train", w)
    print(f"[{fraction:g}] loader: {r['loader_0']:.0f} samples/s (0 workers), {r['loader_2']:.0f} (2 workers)",
          flush=True)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fraction", type=float, action="append",
                    help="fraction of the real 300W-LP size (repeat for several sizes; default 0.02 and 0.05)")
    ap.add_argument("--jobs", type=int, default=2, help="build worker processes (the machine has 2 cores)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dhm-full-scale"), help="folder for trees and builds")
    ap.add_argument("--names", type=Path, default=None,
                    help="synthesise exactly the samples this name list names (one SUBSET/name a line) instead of fractions")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic trees and builds")
    args = ap.parse_args()
    names = None
    if args.names is not None:
        from dhm_data.synth.w300lp import read_name_list

        if args.fraction:
            ap.error("--names and --fraction exclude each other")
        names = read_name_list(args.names)
    fractions = sorted(args.fraction or ([None] if names else [0.02, 0.05]))
    if names is None and any(not 0 < f <= 1 for f in fractions):
        ap.error("--fraction must be in (0, 1]")
    args.work.mkdir(parents=True, exist_ok=True)
    import cv2

    what = f"the {len(names):,} names of {args.names}" if names else f"fractions {fractions}"
    print(f"dhm-data full-scale rehearsal: 300W-LP real size {REAL_TOTAL:,} samples; {what}; "
          f"--jobs {args.jobs}; {os.cpu_count()} CPUs; OpenCV threads {cv2.getNumThreads()}")
    rows = [run(f, args.work, args.jobs, names) for f in fractions]
    mib = 1 << 20
    print()
    head = (f"{'fraction':>8} {'samples':>8} {'wall s':>7} {'samples/s':>9} {'full size':>9} {'main MiB':>8} "
            f"{'worker MiB':>10} {'tree MiB':>8} {'KiB/sample':>10} {'folder KiB/s':>12} {'load 0w/s':>9} "
            f"{'load 2w/s':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        rate = r["written"] / r["wall"]
        print(f"{r['fraction']:>8g} {r['written']:>8,} {r['wall']:>7.1f} {rate:>9.1f} "
              f"{REAL_TOTAL / rate / 3600:>8.2f}h {r['main_hwm'] / mib:>8.0f} {r['worker_hwm'] / mib:>10.0f} "
              f"{r['tree_peak'] / mib:>8.0f} {r['shard_bytes'] / r['written'] / 1024:>10.1f} "
              f"{r['folder_bytes'] / r['written'] / 1024:>12.1f} {r['loader_0']:>9.0f} {r['loader_2']:>9.0f}")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(f"\nsize x{b['written'] / a['written']:.2f}: peak memory x{b['tree_peak'] / a['tree_peak']:.2f} (process "
              f"tree), x{b['main_hwm'] / a['main_hwm']:.2f} (main), x{b['worker_hwm'] / a['worker_hwm']:.2f} "
              f"(largest worker); samples/s x{(b['written'] / b['wall']) / (a['written'] / a['wall']):.2f}")
    print("columns: full size = projected build time of all 122,450 samples at this rate; main / worker MiB = peak "
          "RSS (VmHWM) of the build process / of its largest worker; tree MiB = peak of the summed RSS of the "
          "build's process tree (/proc, every 50 ms); KiB/sample = shard bytes / samples; folder = whole build "
          "folder; load = Loader samples/s (batch 64, shuffled, image + DHM as stored (uint8) + landmarks + pose)")
    for r in rows:
        print(f"  [{r['fraction']:g}] getrusage(RUSAGE_SELF).ru_maxrss of the build process: {r['self_kib'] / 1024:.0f} "
              "MiB (an upper bound only: Linux starts a child's ru_maxrss at its parent's RSS at fork, here this "
              "benchmark's, grown by the loader runs; VmHWM above is the build's own)")
    if not args.keep:
        for r in rows:
            n = r["n"]
            shutil.rmtree(args.work / f"build-{n}", ignore_errors=True)
            shutil.rmtree(args.work / f"raw-{n}", ignore_errors=True)


if __name__ == "__main__":
    main()

"""Build time against the physical floor (decoding the same JPEGs), cold and warm.

    python benchmarks/build.py [--root RAW --bfm MODEL --pipeline aflw2000] [-n 1000]
                               [--baseline SRC] [--repeat 3] [--work /tmp/dhm-bench-build]

Without ``--root``: a synthetic 300W-LP tree of N non-flipped samples (2N
images).  With ``--root``/``--bfm``: that dataset (e.g. the 1,000 real
AFLW2000-3D images of ../shared/reference/aflw2000-3d-1000 with bfm68).

Per round, interleaved so that the machine's drift hits every row alike:

* **cold command**: ``dhm-data build NAME -j N`` as a new process (new
  interpreter, new workers, empty output folder), wall time from the shell's
  point of view, for N = 1 and 2;
* **in-process**: ``run_build`` in an already started interpreter (imports
  done), for N = 1;
* the decode-only floor: ``cv2.imdecode`` of every source JPEG, one process,
  as a plain loop (what the issue measured) and with the build's allocator
  setting (``keep_freed_memory``: glibc keeps freed blocks instead of
  mapping fresh pages per image, which halves the decode on these VMs; the
  build itself runs with it, so ``/ tuned`` is the stricter ratio).

``--baseline SRC`` adds the same rows for another source tree of dhm-data
(e.g. ``git archive 4bf35b0 | tar -x -C /tmp/base``), run with
``PYTHONPATH=SRC`` from a neutral folder: before and after in one run.
Medians over ``--repeat`` rounds; the ratios are what to compare (other
processes on the machine move the absolute figures).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent

IN_PROCESS = """
import json, sys, time
from pathlib import Path
try:
    from dhm_data.build.flow import BuildRequest, run_build
except ImportError:  # a source tree from before the stage packages (--baseline)
    from dhm_data.build import BuildRequest, run_build
a = json.loads(sys.argv[1])
req = dict(pipeline=a["pipeline"], root=Path(a["root"]), out=Path(a["out"]), jobs=1, progress=False)
if a["bfm"]:
    req["bfm"] = Path(a["bfm"])
run_build(BuildRequest(**dict(req, out=Path(a["out"] + "-warm"), limit=8)), echo=lambda m: None)  # imports, caches
t = time.perf_counter()
s = run_build(BuildRequest(**req), echo=lambda m: None)
print(json.dumps({"seconds": time.perf_counter() - t, "written": sum(s["written"].values())}))
"""

DECODE = """
import sys, time, cv2, numpy as np
from pathlib import Path
if sys.argv[2] == "tuned":
    from dhm_data.build.memory import keep_freed_memory
    keep_freed_memory()
cv2.setNumThreads(1)
paths = sorted(p for p in Path(sys.argv[1]).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
for p in paths[:100]:
    cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_COLOR)
t = time.perf_counter()
for p in paths:
    cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_COLOR)
print(time.perf_counter() - t, len(paths))
"""


def _env(src: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    return env


def cold(src: Path, args, out: Path, jobs: int) -> float:
    """Wall seconds of a new ``dhm-data build`` process (from ``src``)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-c", "from dhm_data.cli import main; main()", "build", args.pipeline,
           "--root", str(args.root), "--out", str(out), "-j", str(jobs), "--quiet"]
    if args.bfm:
        cmd += ["--bfm", str(args.bfm)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd="/", env=_env(src))
    return time.perf_counter() - t


def warm(src: Path, args, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(str(out) + "-warm", ignore_errors=True)
    a = {"pipeline": args.pipeline, "root": str(args.root), "out": str(out), "bfm": str(args.bfm or "")}
    r = subprocess.run([sys.executable, "-c", IN_PROCESS, json.dumps(a)], check=True, capture_output=True,
                       text=True, cwd="/", env=_env(src))
    return json.loads(r.stdout.strip().splitlines()[-1])["seconds"]


def decode_floor(root: Path, allocator: str = "plain") -> tuple[float, int]:
    """Seconds to decode every JPEG under ``root`` in a new process, and their
    count; ``allocator="tuned"``: with the build's allocator setting
    (:func:`dhm_data.build.memory.keep_freed_memory`), which halves it here."""
    r = subprocess.run([sys.executable, "-c", DECODE, str(root), allocator], check=True, capture_output=True,
                       text=True, cwd="/", env=_env(SRC))
    t, n = r.stdout.split()
    return float(t), int(n)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, help="raw dataset (default: a synthetic 300W-LP tree)")
    ap.add_argument("--bfm", type=Path, help="model for real data")
    ap.add_argument("--pipeline", default=None, help="pipeline (default: aflw2000 with --root, else 300wlp)")
    ap.add_argument("-n", type=int, default=1000, help="synthetic: non-flipped samples (the tree holds 2N)")
    ap.add_argument("--baseline", type=Path, help="another dhm-data source tree to time beside this one")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/dhm-bench-build"))
    args = ap.parse_args()
    if args.root is None:
        sys.path.insert(0, str(HERE))
        from _trees import synthetic_300wlp

        args.root = synthetic_300wlp(args.work / "raw", args.n)
    args.pipeline = args.pipeline or ("300wlp" if args.bfm is None else "aflw2000")
    trees = {"this": SRC} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    rows: dict = {}
    n_images = 0
    for rnd in range(args.repeat):
        t, n_images = decode_floor(args.root)
        rows.setdefault("decode-only floor, 1 process", []).append(t)
        rows.setdefault("decode only, the build's allocator setting", []).append(decode_floor(args.root, "tuned")[0])
        for name, src in trees.items():
            for jobs in (1, 2):
                rows.setdefault(f"{name}: cold `dhm-data build -j {jobs}`", []).append(
                    cold(src, args, args.work / f"out-{name}-{jobs}", jobs))
            rows.setdefault(f"{name}: in-process run_build, 1 process", []).append(
                warm(src, args, args.work / f"out-{name}-warm"))
        print(f"round {rnd + 1}: " + ", ".join(f"{k.split(':')[0]} {v[-1]:.2f}" for k, v in rows.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    floor = med["decode-only floor, 1 process"]
    print(f"\n{args.pipeline} from {args.root}: {n_images} images; medians of {args.repeat} rounds, same run")
    tuned = med["decode only, the build's allocator setting"]
    print(f"{'row':48s} {'seconds':>8s} {'/ floor':>8s} {'/ tuned':>8s} {'per image':>10s}")
    for k, v in med.items():
        print(f"{k:48s} {v:8.2f} {v / floor:8.2f} {v / tuned:8.2f} {v / n_images * 1e3:8.2f} ms")
    for name in trees:
        j1, j2 = med[f"{name}: cold `dhm-data build -j 1`"], med[f"{name}: cold `dhm-data build -j 2`"]
        print(f"{name}: cold -j 2 vs -j 1: {j1 / j2:.2f}x")
    if args.baseline:
        for k in ("cold `dhm-data build -j 1`", "cold `dhm-data build -j 2`", "in-process run_build, 1 process"):
            print(f"{k}: this / baseline = {med['this: ' + k] / med['baseline: ' + k]:.2f}")


if __name__ == "__main__":
    main()

"""Where one shard's time goes in the build's prepare step, per sample.

    python benchmarks/build_phases.py [-n 1000] [--work /tmp/dhm-bench-build]

Runs the steps of ``dhm_data.build.prepare_stage.prepare_shard`` one after another on the
first N samples of a synthetic 300W-LP tree (the one benchmarks/build.py
generates; made here if missing), timing each: labels (reading and checking
the .mat files, crop window, posing the 3D landmarks), decode, crop, row
(landmarks into the crop), DHM, append (image + DHM into the shard, CRC32s),
finish (small fields, fsync, rename).  The decode-only floor is timed
before and after; everything in one process with the build workers'
allocator setting.  The second of two passes is reported (warm caches).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from _trees import synthetic_300wlp

from dhm_data.build.flow import BuildRequest, plan, resolve_model
from dhm_data.build.prepare_stage import BLOCK_SIZE, _plan_sample, _stack
from dhm_data.build.runner import keep_freed_memory
from dhm_data.formats.images import decode_rgb
from dhm_data.geometry.crop import extract_crop
from dhm_data.prepare.dhm import QuantisedDHMBlocks
from dhm_data.prepare.row import PrepareConfig, prepare_row, source_landmarks_3d
from dhm_data.shards import ShardWriter


def one_shard(reader, items, model, config, out: Path, T: dict) -> None:
    S = config.crop_size
    t0 = time.perf_counter()
    planned = [_plan_sample(i, it, reader, None, config) for i, it in enumerate(items)]
    for p, lm3 in zip(planned, source_landmarks_3d([p.sample for p in planned], model)):
        p.landmarks_3d = lm3
    T["labels"] += time.perf_counter() - t0
    images = np.empty((BLOCK_SIZE, S, S, 3), np.uint8)
    dhms = np.zeros_like(images)
    renderer = QuantisedDHMBlocks(S, config.sigma)
    rows = []
    with ShardWriter(out, len(planned), S, storage={"dhm": config.dhm_storage}) as writer:
        for start in range(0, len(planned), BLOCK_SIZE):
            dhms.fill(0)
            block = planned[start:start + BLOCK_SIZE]
            for b, p in enumerate(block):
                t = time.perf_counter()
                image = decode_rgb(p.sample.image_path, p.window.r)
                t2 = time.perf_counter()
                extract_crop(image, p.window, S, out=images[b])
                t3 = time.perf_counter()
                rows.append(prepare_row(p.sample, p.affine, p.landmarks_3d, p.label_source))
                t4 = time.perf_counter()
                T["decode"] += t2 - t
                T["crop"] += t3 - t2
                T["row"] += t4 - t3
            t = time.perf_counter()
            renderer.render(np.stack([r["landmarks_3d"] for r in rows[-len(block):]]), dhms[:len(block)])
            t2 = time.perf_counter()
            writer.append(image=images[:len(block)], dhm=dhms[:len(block)])
            T["dhm"] += t2 - t
            T["append"] += time.perf_counter() - t2
        t = time.perf_counter()
        writer.finish(_stack(rows), {"n_samples": len(rows)})
        T["finish"] += time.perf_counter() - t
    T["total"] += time.perf_counter() - t0


def decode_only(items) -> float:
    t = time.perf_counter()
    for it in items:
        cv2.imdecode(np.fromfile(it.paths[0], np.uint8), cv2.IMREAD_COLOR)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000, help="samples in the shard")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dhm-bench-build"))
    args = ap.parse_args()
    cv2.setNumThreads(1)
    keep_freed_memory()
    raw = synthetic_300wlp(args.work / "raw", max(args.n, 1000))
    cfg, reader, items, *_ = plan(BuildRequest("300wlp", raw, args.work / "phases"))
    model = resolve_model(None, reader).landmark_model()
    config = PrepareConfig.from_pipeline(cfg)
    items = items[: args.n]
    out = args.work / "phases" / "shard.h5"
    for _ in range(2):
        out.unlink(missing_ok=True)
        T = defaultdict(float)
        before = decode_only(items)
        one_shard(reader, items, model, config, out, T)
        after = decode_only(items)
    n = len(items)
    floor = (before + after) / 2
    for k in ("labels", "decode", "crop", "row", "dhm", "append", "finish", "total"):
        print(f"{k:8s} {T[k] / n * 1e6:7.0f} us/sample  {100 * T[k] / T['total']:5.1f}%")
    print(f"decode-only floor {floor / n * 1e6:7.0f} us/sample; ratio prepare / floor {T['total'] / floor:.2f}")


if __name__ == "__main__":
    main()

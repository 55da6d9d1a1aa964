"""Where one shard's time goes in the build's prepare step, per sample.

    python benchmarks/build_phases.py [--root RAW --bfm MODEL --pipeline aflw2000] [-n 1000]
                                      [--work /tmp/dhm-bench-build]

Runs the steps of ``dhm_data.build.prepare_stage.prepare_shard`` one after
another on the first N samples (a synthetic 300W-LP tree without ``--root``;
with it, e.g. the 1,000 real AFLW2000-3D images of
../shared/reference/aflw2000-3d-1000 and bfm68), timing each:

* labels: pass 1, :func:`dhm_data.build.prepare_blocks.plan_block` (read and
  check the label files, crop windows, label check, 3D landmarks, rows);
* decode, crop (with the BGR -> RGB swap of the crop), DHM: pass 2;
* append: image + DHM into the shard (Blosc-LZ4, CRC32s: the shard writer);
* finish: the small fields, checksums, fsync, rename.

The decode-only floor (``cv2.imdecode`` of the whole JPEG, as benchmarks/build.py
times it) is taken before and after; everything in one process with the build
workers' allocator setting.  The last of three passes is reported (warm caches).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from dhm_data.build.flow import BuildRequest, plan, resolve_model
from dhm_data.build.memory import keep_freed_memory
from dhm_data.build.prepare_blocks import BLOCK_SIZE, BlockSettings, plan_block, stack_rows
from dhm_data.formats.images import decode_checked
from dhm_data.geometry.crop import extract_crop
from dhm_data.prepare.dhm import QuantisedDHMBlocks
from dhm_data.prepare.row import PrepareConfig
from dhm_data.shards import ShardWriter

PHASES = ("labels", "decode", "crop", "dhm", "append", "finish")


def one_shard(settings: BlockSettings, items, out: Path, T: dict) -> None:
    S = settings.config.crop_size
    t0 = time.perf_counter()
    plans = [plan_block(settings, items[i:i + BLOCK_SIZE], i) for i in range(0, len(items), BLOCK_SIZE)]
    T["labels"] += time.perf_counter() - t0
    rows = [r for p in plans for r in p.rows]
    pixels = [p for pl in plans for p in pl.pixels]
    images = np.empty((BLOCK_SIZE, S, S, 3), np.uint8)
    dhms = np.zeros_like(images)
    renderer = QuantisedDHMBlocks(S, settings.config.sigma)
    with ShardWriter(out, len(pixels), S, storage={"dhm": settings.config.dhm_storage}) as writer:
        for start in range(0, len(pixels), BLOCK_SIZE):
            block = pixels[start:start + BLOCK_SIZE]
            for b, p in enumerate(block):
                t = time.perf_counter()
                image, _ = decode_checked(p.image_path, p.window.r, rgb=False)
                t2 = time.perf_counter()
                extract_crop(image, p.window, S, out=images[b])
                cv2.cvtColor(images[b], cv2.COLOR_BGR2RGB, dst=images[b])
                T["decode"] += t2 - t
                T["crop"] += time.perf_counter() - t2
            t = time.perf_counter()
            dhms[:len(block)] = 0
            renderer.render(np.stack([p.landmarks_3d for p in block]), dhms[:len(block)])
            t2 = time.perf_counter()
            writer.append(image=images[:len(block)], dhm=dhms[:len(block)])
            T["dhm"] += t2 - t
            T["append"] += time.perf_counter() - t2
        t = time.perf_counter()
        writer.finish(stack_rows(rows), {"n_samples": len(rows)})
        T["finish"] += time.perf_counter() - t
    T["total"] += time.perf_counter() - t0


def decode_only(items) -> float:
    t = time.perf_counter()
    for it in items:
        cv2.imdecode(np.fromfile(it.paths[0], np.uint8), cv2.IMREAD_COLOR)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, help="raw dataset (default: a synthetic 300W-LP tree)")
    ap.add_argument("--bfm", type=Path, help="model for real data")
    ap.add_argument("--pipeline", default=None, help="pipeline (default: aflw2000 with --bfm, else 300wlp)")
    ap.add_argument("-n", type=int, default=1000, help="samples in the shard")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dhm-bench-build"))
    args = ap.parse_args()
    cv2.setNumThreads(1)
    keep_freed_memory()
    if args.root is None:
        from _trees import synthetic_300wlp

        args.root = synthetic_300wlp(args.work / "raw", max(args.n, 1000))
    pipeline = args.pipeline or ("aflw2000" if args.bfm else "300wlp")
    cfg, reader, items, *_ = plan(BuildRequest(pipeline, args.root, args.work / "phases", args.bfm))
    model = resolve_model(args.bfm, reader).landmark_model()
    settings = BlockSettings(reader, model, PrepareConfig.from_pipeline(cfg))
    items = items[: args.n]
    out = args.work / "phases" / "shard.h5"
    out.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        out.unlink(missing_ok=True)
        T = defaultdict(float)
        before = decode_only(items)
        one_shard(settings, items, out, T)
        after = decode_only(items)
    n = len(items)
    floor = (before + after) / 2
    print(f"{pipeline}, {n} samples from {args.root}")
    for k in PHASES + ("total",):
        print(f"{k:8s} {T[k] / n * 1e6:7.0f} us/sample  {100 * T[k] / T['total']:5.1f}%  {T[k] / floor:5.2f} x floor")
    print(f"decode-only floor {floor / n * 1e6:7.0f} us/sample; ratio prepare / floor {T['total'] / floor:.2f}")


if __name__ == "__main__":
    main()

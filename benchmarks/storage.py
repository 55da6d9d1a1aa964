"""Storage trade-offs for shard fields: bytes on disk vs write and read cost.

    python benchmarks/storage.py [--samples 1000] [--size 224] [--dir DIR]

Same synthetic content as benchmarks/loader.py (1/f-noise JPEG-q90 textures as
crops, DHMs of 68 face-like landmarks, sigma 1 px).  For each candidate
storage of the image crop and of the DHM, writes one HDF5 file, then times a
random-order, warm-page-cache read of every sample (best of 3 passes) into a reused buffer
(decode included) in one process.  Prints one table; the README records the
figures and the defaults picked from them (dhm_data.shards.schema).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import h5py  # noqa: E402
import hdf5plugin  # noqa: E402

from dhm_data.shards.blosc import blosc_decoder as _blosc_decoder  # noqa: E402
from dhm_data.shards.blosc import chunk_table as _chunk_table  # noqa: E402
from dhm_data.prepare.dhm import render_dhm
from dhm_data.shards import schema


def _bench_module():
    spec = importlib.util.spec_from_file_location("dhm_bench_loader", Path(__file__).with_name("loader.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def write_dataset(path, data, **kw):
    t = time.perf_counter()
    with h5py.File(path, "w") as h:
        if kw.get("chunks") is None:
            h.create_dataset("x", data=data, **kw)
        else:
            d = h.create_dataset("x", shape=data.shape, dtype=data.dtype, **kw)
            for i in range(len(data)):   # per-sample writes, like a streaming writer
                d[i] = data[i]
    return time.perf_counter() - t


def read_h5(path, n, order, out):
    with h5py.File(path, "r", rdcc_nbytes=0) as h:
        d = h["x"]
        for i in order[:50]:
            out[0] = d[int(i)]
        t = time.perf_counter()
        for j, i in enumerate(order):
            out[j % len(out)] = d[int(i)]
        return n / (time.perf_counter() - t)


def read_memmap(path, n, order, out):
    with h5py.File(path, "r") as h:
        d = h["x"]
        mm = np.memmap(path, d.dtype, "r", offset=d.id.get_offset(), shape=d.shape)
    t = time.perf_counter()
    for j, i in enumerate(order):
        out[j % len(out)] = mm[i]
    return n / (time.perf_counter() - t)


def read_direct_blosc(path, n, order, out):
    dec = _blosc_decoder()
    if dec is None:
        return float("nan")
    with h5py.File(path, "r") as h:
        d = h["x"]
        fm = np.memmap(path, np.uint8, "r")
        table = _chunk_table(d, n, out[0].nbytes, fm)
    if table is None:
        return float("nan")
    sz, base = out[0].nbytes, out.ctypes.data
    t = time.perf_counter()
    for j, i in enumerate(order):
        dec(table[i], base + (j % len(out)) * sz, sz, 1)
    return n / (time.perf_counter() - t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args(argv)
    import cv2

    bench = _bench_module()
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    cols = bench.synthetic_columns(args.samples, args.size, rng, bench.textures(rng))
    print(f"synthetic content: {args.samples} samples, crop {args.size} ({time.perf_counter() - t:.1f} s)")
    n, S = args.samples, args.size
    images, dhm = cols["image"], cols["dhm"]
    dhm_u8 = schema.quantise(dhm)
    order = rng.permutation(n)
    tmp = tempfile.TemporaryDirectory(prefix="dhm-storage-bench-")
    folder = args.dir or Path(tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []

    def row(what, path, write_s, read_rate, note=""):
        size = os.path.getsize(path) / n if path else 0
        rows.append((what, size, n / write_s if write_s else float("nan"), read_rate, note))
        print(f"  {what:50s} {size:>10,.0f} {rows[-1][2]:>10,.0f} {read_rate:>12,.0f}  {note}", flush=True)

    lz4 = hdf5plugin.Blosc(**schema.BLOSC_LZ4)
    print(f"  {'what':50s} {'B/sample':>10s} {'write/s':>10s} {'read/s warm':>12s}")
    print("image crop (uint8)")
    out_img = np.empty((64, S, S, 3), np.uint8)
    variants = [
        ("raw contiguous, np.memmap (default)", {}, read_memmap),
        ("raw contiguous, ds[i]", {}, read_h5),
        ("per-sample chunks, blosc lz4, ds[i]", dict(chunks=(1, S, S, 3), **lz4), read_h5),
        ("per-sample chunks, blosc lz4, direct decode", dict(chunks=(1, S, S, 3), **lz4), read_direct_blosc),
        ("per-sample chunks, blosc zstd 1, ds[i]",
         dict(chunks=(1, S, S, 3), **hdf5plugin.Blosc(cname="zstd", clevel=1, shuffle=0)), read_h5),
        ("per-sample chunks, gzip 1, ds[i]", dict(chunks=(1, S, S, 3), compression="gzip", compression_opts=1),
         read_h5),
    ]
    for what, kw, reader in variants:
        p = folder / f"img-{len(rows)}.h5"
        w = write_dataset(p, images, **kw)
        warm(p)
        row(what, p, w, max(reader(p, n, order, out_img) for _ in range(3)))   # best of 3
    for q in (95, 90):
        p = folder / f"img-jpeg{q}.h5"
        t = time.perf_counter()
        blobs = [cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, q])[1].ravel() for im in images]
        offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
        with h5py.File(p, "w") as h:
            h.create_dataset("x", data=np.concatenate(blobs))
            h.create_dataset("offsets", data=offsets)
        w = time.perf_counter() - t
        warm(p)
        with h5py.File(p, "r") as h:
            mm = np.memmap(p, np.uint8, "r", offset=h["x"].id.get_offset(), shape=h["x"].shape)
        err = []
        r = 0.0
        for _ in range(3):
            t = time.perf_counter()
            for j, i in enumerate(order):
                # Channels go in and out of OpenCV in the same order: no colour conversion needed.
                out_img[j % 64] = cv2.imdecode(mm[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR)
            r = max(r, n / (time.perf_counter() - t))
        for i in range(0, n, max(1, n // 50)):
            dec = cv2.imdecode(blobs[i], cv2.IMREAD_COLOR).astype(np.float64)
            err.append(np.mean((dec - images[i]) ** 2))
        psnr = 10 * np.log10(255 ** 2 / np.mean(err))
        row(f"JPEG q{q} blob per sample, cv2.imdecode", p, w, r, f"lossy: PSNR {psnr:.1f} dB")

    print("DHM (values in [0, 1]; uint8 = round(255 v), error <= 0.5/255 = 0.00196)")
    out_u8 = np.empty((64, S, S, 3), np.uint8)
    out_f16 = np.empty((64, S, S, 3), np.float16)
    dhm_f16 = dhm.astype(np.float16)
    e16 = float(np.abs(dhm_f16.astype(np.float32) - dhm).max())
    variants = [
        ("float16, contiguous, np.memmap", dhm_f16, {}, read_memmap, out_f16, f"error <= {e16:.1e}"),
        ("float16, per-sample chunks, blosc lz4+shuffle, ds[i]", dhm_f16,
         dict(chunks=(1, S, S, 3), **hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=1)), read_h5, out_f16, ""),
        ("float16, per-sample chunks, blosc zstd 1+shuffle, ds[i]", dhm_f16,
         dict(chunks=(1, S, S, 3), **hdf5plugin.Blosc(cname="zstd", clevel=1, shuffle=1)), read_h5, out_f16, ""),
        ("uint8, contiguous, np.memmap (option u8q-raw)", dhm_u8, {}, read_memmap, out_u8, ""),
        ("uint8, per-sample chunks, blosc lz4, ds[i]", dhm_u8, dict(chunks=(1, S, S, 3), **lz4), read_h5, out_u8, ""),
        ("uint8, per-sample chunks, blosc lz4, direct (default)", dhm_u8, dict(chunks=(1, S, S, 3), **lz4),
         read_direct_blosc, out_u8, "the loader's path"),
        ("uint8, per-sample chunks, blosc lz4 clevel 9, direct", dhm_u8,
         dict(chunks=(1, S, S, 3), **hdf5plugin.Blosc(cname="lz4", clevel=9, shuffle=0)), read_direct_blosc, out_u8, ""),
        ("uint8, per-sample chunks, blosc zstd 1, direct", dhm_u8,
         dict(chunks=(1, S, S, 3), **hdf5plugin.Blosc(cname="zstd", clevel=1, shuffle=0)), read_direct_blosc, out_u8, ""),
        ("uint8, per-sample chunks, gzip 1, ds[i]", dhm_u8,
         dict(chunks=(1, S, S, 3), compression="gzip", compression_opts=1), read_h5, out_u8, ""),
    ]
    for what, data, kw, reader, out, note in variants:
        p = folder / f"dhm-{len(rows)}.h5"
        w = write_dataset(p, data, **kw)
        warm(p)
        row(what, p, w, max(reader(p, n, order, out) for _ in range(3)), note)   # best of 3
    lm3 = cols["landmarks_3d"]
    t = time.perf_counter()
    for j, i in enumerate(order[: min(n, 300)]):
        out_u8[j % 64] = schema.quantise(render_dhm(lm3[i], S, 1.0)[None])[0]
    r = min(n, 300) / (time.perf_counter() - t)
    rows.append(("not stored: render from landmarks_3d at load (numpy)", 0, float("nan"), r, ""))
    print(f"  {'not stored: render from landmarks_3d at load (numpy)':50s} {0:>10,.0f} {'-':>10s} {r:>12,.0f}  "
          "(0 extra bytes: landmarks_3d is stored anyway)")
    t = time.perf_counter()
    f32 = np.empty((64, S, S, 3), np.float32)
    for k in range(20):
        schema.dequantise(out_u8, out=f32)
    print(f"  uint8 -> float32 [0, 1] conversion: {20 * 64 / (time.perf_counter() - t):,.0f} samples/s "
          "(memory-bound: 4x the bytes; prefer scaling on the device)")
    tmp.cleanup()


if __name__ == "__main__":
    main()

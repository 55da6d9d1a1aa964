"""Loader throughput on a synthetic build (no real data needed).

    python benchmarks/loader.py [--samples 5120] [--shard-size 1000] [--size 224] [--dir DIR] [--epochs 2]

Writes a synthetic split folder with :func:`dhm_data.shards.shards.write_shard`
(1/f-noise textures passed through JPEG q90 as images: they compress
losslessly about as badly as photos; DHMs of 68 face-like landmarks rendered
by :func:`dhm_data.prepare.dhm.render_dhm`), then, with a warm page cache, prints
samples/s for image + DHM + landmarks + parameters, batch 64, shuffled order,
with 0, 1 and 2 workers, bytes per sample on disk, and the ratio to the
floor: a bare random read of the same bytes (image bytes + compressed DHM
bytes + small fields) from a raw ``np.memmap``, and the CPU time per sample
(loader process + workers, timed epochs), which shows the scaling even on a
busy machine: near-linear scaling = about the same CPU per sample with 1 or 2
workers as with 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dhm_data.load import Loader, ShardDataset
from dhm_data.prepare.dhm import render_dhm
from dhm_data.shards import write_shard

FIELDS = ["image", "dhm", "landmarks_2d", "landmarks_3d", "pose_para", "shape_para", "exp_para"]


# ------------------------------------------------------------------ synthetic content
def face_template() -> np.ndarray:
    """A crude frontal 68-point iBUG layout in a unit box, (68, 3) (z towards the camera)."""
    t = np.linspace(-1, 1, 17)
    jaw = np.c_[0.9 * np.sin(t * 1.4), 0.15 + 0.75 * np.cos(t * 1.4), -0.4 + 0.3 * np.cos(t * 1.4)]
    brow_r = np.c_[np.linspace(-0.75, -0.15, 5), -0.45 - 0.08 * np.sin(np.linspace(0, np.pi, 5)), np.full(5, 0.2)]
    brow_l = brow_r[::-1] * [-1, 1, 1]
    bridge = np.c_[np.zeros(4), np.linspace(-0.3, 0.1, 4), np.linspace(0.3, 0.6, 4)]
    nostrils = np.c_[np.linspace(-0.2, 0.2, 5), np.full(5, 0.2), 0.35 + 0.1 * np.cos(np.linspace(-1.5, 1.5, 5))]
    a = np.linspace(0, 2 * np.pi, 7)[:-1]
    eye_r = np.c_[-0.42 - 0.17 * np.cos(a), -0.28 - 0.07 * np.sin(a), np.full(6, 0.15)]
    eye_l = np.c_[0.42 + 0.17 * np.cos(a), -0.28 - 0.07 * np.sin(a), np.full(6, 0.15)]
    b = np.linspace(np.pi, -np.pi, 13)[:-1]
    outer = np.c_[0.38 * np.cos(b), 0.5 - 0.13 * np.sin(b), 0.25 + 0.05 * np.cos(b)]
    c = np.linspace(np.pi, -np.pi, 9)[:-1]
    inner = np.c_[0.25 * np.cos(c), 0.5 - 0.05 * np.sin(c), np.full(8, 0.27)]
    return np.vstack([jaw, brow_r, brow_l, bridge, nostrils, eye_r, eye_l, outer, inner])


def textures(rng, n=6, side=1024) -> list[np.ndarray]:
    """1/f-noise RGB textures (uint8) round-tripped through JPEG q90."""
    import cv2

    out = []
    fy = np.fft.fftfreq(side)[:, None]
    fx = np.fft.rfftfreq(side)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / side) ** 1.1
    for _ in range(n):
        chans = []
        for _c in range(3):
            spec = amp * np.exp(2j * np.pi * rng.random(amp.shape))
            x = np.fft.irfft2(spec, s=(side, side))
            chans.append((x - x.mean()) / x.std())
        img = np.stack(chans, -1)
        img = img @ rng.normal(0.6, 0.3, (3, 3))
        img = np.clip(128 + 40 * img, 0, 255).astype(np.uint8)
        ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(cv2.imdecode(enc, cv2.IMREAD_COLOR))
    return out


def synthetic_columns(n: int, size: int, rng, tex=None, offset: int = 0) -> dict:
    """``n`` synthetic shard rows for a ``size`` crop (all schema fields)."""
    tex = tex if tex is not None else textures(rng, 2, 512)
    tmpl = face_template()
    images = np.empty((n, size, size, 3), np.uint8)
    dhms = np.empty((n, size, size, 3), np.float32)
    lm3 = np.empty((n, 68, 3), np.float32)
    for i in range(n):
        T = tex[rng.integers(len(tex))]
        y0, x0 = rng.integers(0, T.shape[0] - size + 1), rng.integers(0, T.shape[1] - size + 1)
        images[i] = T[y0:y0 + size, x0:x0 + size]
        yaw = rng.uniform(-1.2, 1.2)
        c, s = np.cos(yaw), np.sin(yaw)
        P = tmpl @ np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]]).T
        P = P * size * rng.uniform(0.33, 0.4) + [size / 2 + rng.normal(0, 4), size / 2 + rng.normal(0, 4), 0]
        P[:, :2] += rng.normal(0, 0.7, (68, 2))
        lm3[i] = P
        dhms[i] = render_dhm(P, size, 1.0)
    names = np.array([f"SYN_image_{offset + i:06d}_0" for i in range(n)], dtype=object)
    return {
        "image": images,
        "dhm": dhms,
        "landmarks_2d": lm3[:, :, :2].copy(),
        "landmarks_3d": lm3,
        "pose_para": rng.normal(0, 0.3, (n, 7)).astype(np.float32),
        "shape_para": rng.normal(0, 1, (n, 199)).astype(np.float32),
        "exp_para": rng.normal(0, 1, (n, 29)).astype(np.float32),
        "crop_affine": np.tile([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], (n, 1, 1)),
        "yaw": rng.uniform(-90, 90, n).astype(np.float32),
        "name": names,
        "subset": np.array(["SYN"] * n, dtype=object),
        "flipped": np.zeros(n, bool),
        "label_source": np.array(["label"] * n, dtype=object),
        "fit_residual": np.full(n, np.nan, np.float32),
        "fit_converged": np.ones(n, bool),
    }


def build(folder: Path, samples: int, shard_size: int, size: int, seed: int = 0, dhm_storage: str = "u8q-lz4") -> list[Path]:
    rng = np.random.default_rng(seed)
    tex = textures(rng)
    paths = []
    t0 = time.perf_counter()
    render = 0.0
    for k, start in enumerate(range(0, samples, shard_size)):
        n = min(shard_size, samples - start)
        t = time.perf_counter()
        cols = synthetic_columns(n, size, rng, tex, start)
        render += time.perf_counter() - t
        paths.append(write_shard(folder / f"shard-{k:05d}.h5", cols,
                                 {"dataset": "synthetic", "split": "train", "shard_index": k,
                                  "pipeline": {"crop": {"size": size}, "dhm": {"sigma": 1.0}}},
                                 storage={"dhm": dhm_storage}))
    total = time.perf_counter() - t0
    print(f"wrote {samples} samples in {len(paths)} shards: {total:.1f} s "
          f"(content {render:.1f} s, writer {samples / max(total - render, 1e-9):,.0f} samples/s)")
    return paths


# ------------------------------------------------------------------ measurements
def warm(paths):
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


REPEATS = 3


def _cpu_seconds(pids=()):
    """CPU seconds (user + system) of this process and the live processes ``pids``."""
    t = os.times()
    total = t.user + t.system
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def loader_rate(folder, dtype, workers, epochs, copy, block_size=16, mp_context=None, repeats=None, check_crc=False):
    """(samples/s, CPU microseconds per sample) of the best of ``repeats`` runs of
    ``epochs`` timed epochs (after one warm-up epoch that starts the workers, opens
    the files and maps their pages), each with a fresh dataset and loader, as a
    training script would have.  CPU time is that of this process and its
    workers during the timed epochs (Linux /proc): the work per sample, which a
    busy machine does not inflate the way it inflates wall-clock time."""
    best, cpu_best = 0.0, float("inf")
    for _ in range(repeats or REPEATS):
        ds = ShardDataset(folder, fields=FIELDS, dhm_dtype=dtype, check_crc=check_crc)
        with Loader(ds, batch_size=64, shuffle=True, seed=0, num_workers=workers, copy=copy,
                    block_size=block_size, mp_context=mp_context) as ld:
            ld.set_epoch(100)
            for _ in ld:
                pass
            pids = [p.pid for p in ld._workers]
            n, t = 0, 0.0
            try:
                c0 = _cpu_seconds(pids)
            except OSError:
                c0 = None
            for e in range(epochs):
                ld.set_epoch(e)
                t0 = time.perf_counter()
                for b in ld:
                    n += len(b["image"])
                t += time.perf_counter() - t0
            if c0 is not None:
                cpu_best = min(cpu_best, (_cpu_seconds(pids) - c0) / n * 1e6)
        best = max(best, n / t)
    return best, cpu_best


def floor_rate(ds, epochs):
    """Bare random reads of the same bytes per sample from np.memmaps, batch 64,
    random order, one process, no decoding: the image row; the sample's stored
    DHM bytes (its compressed chunk, or its raw row); and as many bytes as its
    small fields (one gather per batch and shard, as the loader does from the
    arrays it holds in memory).  The floor of any loader of this build."""
    import h5py

    per_file = []
    for p in ds.paths:
        with h5py.File(p, "r") as h:
            n = h["image"].shape[0]
            img = np.memmap(p, np.uint8, "r", offset=h["image"].id.get_offset(), shape=h["image"].shape).view(np.ndarray)
            d = h["dhm"]
            if d.chunks is None:   # u8q-raw: the quantised DHM rows
                dhm = np.memmap(p, np.uint8, "r", offset=d.id.get_offset(), shape=d.shape).view(np.ndarray)
                offs = sizes = None
            else:                  # the compressed chunks
                dhm = np.memmap(p, np.uint8, "r").view(np.ndarray)
                info = [d.id.get_chunk_info(i) for i in range(n)]
                offs = [c.byte_offset for c in info]
                sizes = [c.size for c in info]
            small = sum(int(np.prod(h[f].shape[1:])) * h[f].dtype.itemsize for f in FIELDS[2:])
            lm = h["landmarks_2d"]
            start = min(lm.id.get_offset(), os.path.getsize(p) - n * small)
            smalls = np.memmap(p, np.uint8, "r", offset=start, shape=(n, small)).view(np.ndarray)
        per_file.append((img, dhm, offs, sizes, smalls))
    B = 64
    S = per_file[0][0].shape[1:]
    out_img = np.empty((B,) + S, np.uint8)
    out_dhm = np.empty((B,) + S, np.uint8)
    flat_dhm = out_dhm.reshape(B, -1)
    out_small = np.empty((B, per_file[0][4].shape[1]), np.uint8)
    rng = np.random.default_rng(1)
    starts = ds.starts
    n, t = 0, 0.0
    for e in range(epochs + 1):   # epoch 0 maps the pages (untimed, as the loader's warm-up)
        order = rng.permutation(len(ds))
        t0 = time.perf_counter()
        for i in range(0, len(order), B):
            idx = order[i:i + B]
            fid = np.searchsorted(starts, idx, side="right") - 1
            loc = idx - starts[fid]
            for k in np.unique(fid):
                pos = np.flatnonzero(fid == k)
                img, dhm, offs, sizes, smalls = per_file[k]
                out_small[pos] = smalls[loc[pos]]
                for j, l in zip(pos.tolist(), loc[pos].tolist()):
                    out_img[j] = img[l]
                    if offs is None:
                        out_dhm[j] = dhm[l]
                    else:
                        o, m = offs[l], sizes[l]
                        flat_dhm[j, :m] = dhm[o:o + m]
            n += len(idx) if e else 0
        t += time.perf_counter() - t0 if e else 0.0
    return n / t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=5120)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many timed runs per configuration")
    ap.add_argument("--dir", type=Path, default=None, help="reuse/keep the synthetic build here")
    ap.add_argument("--dhm-storage", default="u8q-lz4", choices=["u8q-lz4", "u8q-raw"],
                    help="DHM storage of the synthetic build (default: the schema's)")
    args = ap.parse_args(argv)
    global REPEATS
    REPEATS = args.repeats
    tmp = None
    folder = args.dir
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="dhm-loader-bench-")
        folder = Path(tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    paths = sorted(folder.glob("shard-*.h5"))
    if not paths:
        paths = build(folder, args.samples, args.shard_size, args.size, dhm_storage=args.dhm_storage)
    warm(paths)
    ds = ShardDataset(folder, fields=FIELDS, dhm_dtype="uint8")
    total = sum(os.path.getsize(p) for p in paths)
    print(f"{len(ds)} samples, crop {args.size}, {len(paths)} shards, DHM storage {args.dhm_storage}, "
          f"{total / len(ds):,.0f} bytes/sample on disk "
          f"(image {args.size * args.size * 3:,} raw)")
    print("Each row: best of --repeats runs; every run is paired with a floor measurement right before it")
    print("(the machine may be shared), and the ratio is best loader / best paired floor.")
    print(f"{'config':56s} {'samples/s':>10s} {'floor/s':>9s} {'/floor':>7s} {'CPU us/sample':>14s}")

    def measure(label, dtype, w, copy, block_size=16, mp_context=None, check_crc=False):
        best, best_floor, cpu = 0.0, 0.0, float("inf")
        for _ in range(args.repeats):
            best_floor = max(best_floor, floor_rate(ds, args.epochs))
            r, c = loader_rate(folder, dtype, w, args.epochs, copy, block_size, mp_context, repeats=1,
                               check_crc=check_crc)
            best, cpu = max(best, r), min(cpu, c)
        print(f"{label:56s} {best:>10,.0f} {best_floor:>9,.0f} {best / best_floor:>7.2f} {cpu:>14,.1f}", flush=True)

    for dtype in ("uint8", "float32"):
        for copy in (False, True):
            for w in (0, 1, 2):
                measure(f"dhm {dtype:7s} copy={str(copy):5s} workers={w} (fork)", dtype, w, copy)
    measure("dhm uint8   copy=False workers=0 block_size=1 (uniform)", "uint8", 0, False, block_size=1)
    for w in (1, 2):
        measure(f"dhm uint8   copy=False workers={w} (spawn)", "uint8", w, False, mp_context="spawn")
    for dtype, w in (("uint8", 0), ("float32", 0), ("uint8", 2)):
        measure(f"dhm {dtype:7s} copy=False workers={w} check_crc=True", dtype, w, False, check_crc=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Generate dhm-data's SYNTHETIC face model (not the Basel Face Model).

Writes ``dhm_data/assets/synthetic_face_model.npz`` in dhm-data's compact
model format (:mod:`dhm_data.models.formats.compact`: same keys and marker; the
arrays are stored as float32 in a compressed zip to keep the asset small, the
loader casts them to float64).  Run from the repository root::

    python scripts/make_synthetic_model.py            # (re)write the asset
    python scripts/make_synthetic_model.py --check    # compare with the asset

Everything is deterministic (a fixed seed, no data files): the geometry is
designed from textbook facial proportions, nothing is derived from any real
morphable model or dataset.

The model, in BFM-like units and axes (micrometres; x to the image right in a
frontal view, i.e. the person's left; y up; z towards the camera):

* Mean shape: a height field over the face plane, ``z = ellipsoid + nose +
  eye sockets + brow ridge + cheekbones + lips + chin`` (all smooth bumps),
  sampled on a left-right symmetric vertex set: the 68 iBUG landmark points
  placed at anthropometric positions (face width at the jaw ends 148 mm,
  inter-pupil distance 64 mm, mouth width 52 mm, chin 90 mm below the eye
  line... see ``LANDMARKS_MM``), 7 contour-candidate vertices inward of
  each jaw landmark, denser rings around the eyes and mouth, and a
  hexagonal grid (6.5 mm spacing) filling the face outline, thinned to
  >= 3.4 mm between vertices (the vertex set is exactly left-right
  symmetric: 720 vertices); Delaunay triangles in the face plane (triangles outside the outline and across the
  mouth slit are dropped).  The neutral mean carries a small expression
  mean (0.3 x the jaw-opening mode), as the BFM + 3DDFA mean does.
* Identity basis, K = 199 (the size of 300W-LP's ``Shape_Para``): the
  leading eigenvectors of a smooth squared-exponential kernel (length scale
  45 mm) over the mean's vertices, with a seeded random 3D displacement
  direction each, rigid motions (3 translations, 3 rotations) projected out,
  orthogonalised.  Each column has Euclidean norm ``sqrt(3 V / 159645)``,
  i.e. the per-coordinate magnitude of a unit-norm principal component of
  the 53,215-vertex BFM, so that ``Shape_Para`` values drawn from the prior
  have the same order of magnitude as the real ones (~1e5).  Prior standard
  deviations ``identity_std[k] = 6e5 * (k + 1) ** -0.7`` (decaying).
* Expression basis, E = 29 (the size of ``Exp_Para``): 6 designed modes (jaw
  opening, smile, pucker, brow raise, eye closing, cheek puff) then 23
  localised smooth random fields, orthogonalised in that order; each column
  scaled to a 5 mm largest vertex displacement per unit coefficient, so
  ``Exp_Para`` is of order 1 like 3DDFA's pre-scaled expression parameters;
  ``expression_std[e] = 2.0 * (e + 1) ** -0.6``.
* ``contour_candidates``: for each jaw landmark i, the landmark vertex and 7
  vertices on the horizontal line inward of it (``t * x_i`` for t = 0.92 ...
  0.44; landmark 8, the chin, has the single chin vertex), in order from the
  outline inwards; landmark marching picks the outermost posed one.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
from scipy.spatial import Delaunay

REPO = Path(__file__).resolve().parents[1]
ASSET = REPO / "dhm_data" / "assets" / "synthetic_face_model.npz"

MODEL_NAME = "dhm-data SYNTHETIC face model (not BFM)"
GENERATOR_VERSION = 1
SEED = 20240917
N_IDENTITY = 199
N_EXPRESSION = 29
MM = 1000.0  # micrometres per millimetre
BFM_VALUES = 53215 * 3  # entries of one BFM principal component

# ----------------------------------------------------------------- landmarks
# (x, y) in millimetres, iBUG 68 order, image-left (the person's right) first.
_BROW_L = [(-62, 40), (-51, 46.5), (-39, 48.5), (-27, 47.5), (-15, 44)]
_EYE_L = [(-46, 29), (-39, 33.5), (-25.5, 33.5), (-18, 28.5), (-25.5, 24.5), (-39, 24.5)]
_NOSE = [(0, 31), (0, 19), (0, 7), (0, -6), (-14, -17), (-7, -19.5), (0, -20.5), (7, -19.5), (14, -17)]
_MOUTH_OUT = [(-26, -42), (-17, -36.5), (-7, -33.5), (0, -34.5), (7, -33.5), (17, -36.5),
              (26, -42), (17, -50), (7, -53.5), (0, -54.5), (-7, -53.5), (-17, -50)]
_MOUTH_IN = [(-21, -42), (-8.5, -40.8), (0, -41), (8.5, -40.8), (21, -42), (8.5, -43.2), (0, -43.4), (-8.5, -43.2)]

JAW_A, JAW_Y0, JAW_B, JAW_N = 74.0, 20.0, 110.0, 2.4  # jaw superellipse (mm)
TOP_B = 78.0  # forehead half-height above JAW_Y0 (mm)


def _mirror(points):
    return [(-x, y) for x, y in points]


def jaw_outline(m: int) -> np.ndarray:
    """``m`` points (mm) of the lower face outline from (-a, y0) via the chin
    to (a, y0), equally spaced in arc length: ``|x/a|^n + |(y-y0)/b|^n = 1``."""
    phi = np.linspace(0, np.pi, 4001)
    c, s = np.cos(phi), np.sin(phi)
    x = -JAW_A * np.sign(c) * np.abs(c) ** (2 / JAW_N)
    y = JAW_Y0 - JAW_B * np.abs(s) ** (2 / JAW_N)
    arc = np.concatenate([[0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    t = np.linspace(0, arc[-1], m)
    return np.stack([np.interp(t, arc, x), np.interp(t, arc, y)], 1)


def landmarks_mm() -> np.ndarray:
    jaw = jaw_outline(17)
    jaw[8, 0] = 0.0
    jaw[9:] = jaw[:8][::-1] * [-1, 1]  # exact symmetry
    pts = (
        [tuple(p) for p in jaw]
        + _BROW_L + _mirror(_BROW_L)[::-1]
        + _NOSE
        + _EYE_L + [(-x, y) for x, y in [_EYE_L[3], _EYE_L[2], _EYE_L[1], _EYE_L[0], _EYE_L[5], _EYE_L[4]]]
        + _MOUTH_OUT + _MOUTH_IN
    )
    a = np.asarray(pts, np.float64)
    assert a.shape == (68, 2)
    return a


LANDMARKS_MM = landmarks_mm()


def outline_polygon() -> np.ndarray:
    """Closed face outline (mm): the jaw then the forehead arc, counter-clockwise."""
    jaw = jaw_outline(121)
    th = np.linspace(0, np.pi, 81)[1:-1]
    top = np.stack([JAW_A * np.cos(th), JAW_Y0 + TOP_B * np.sin(th)], 1)
    return np.concatenate([jaw, top])


def inside(poly: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon for points ``(N, 2)``."""
    x, y = p[:, 0:1], p[:, 1:2]
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    cross = ((y0 > y) != (y1 > y)) & (x < (x1 - x0) * (y - y0) / np.where(y1 == y0, 1e-12, y1 - y0) + x0)
    return np.count_nonzero(cross, axis=1) % 2 == 1


# --------------------------------------------------------------- height field
def _g(x, y, cx, cy, sx, sy):
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _smoothstep(a, b, v):
    t = np.clip((v - a) / (b - a), 0, 1)
    return t * t * (3 - 2 * t)


def height_mm(x, y) -> np.ndarray:
    """Depth z (mm, towards the camera) of the face surface at (x, y) mm."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    B = np.where(y >= 0, 125.0, 150.0)
    base = 100.0 * np.sqrt(np.clip(1 - (x / 84.0) ** 2 - (y / B) ** 2, 0.01, None))
    # nose: ridge from the bridge (y = 31) to the tip (y = -6), base at y = -20
    ridge_h = np.where(y > -6, 4 + 22 * _smoothstep(31, -6, y), 26 * (1 - _smoothstep(-6, -21, y)))
    ridge_h = ridge_h * (1 - _smoothstep(31, 42, y))
    width = 7 + 7 * _smoothstep(31, -14, y)
    nose = ridge_h * np.exp(-0.5 * (x / width) ** 2)
    alae = 7 * (_g(x, y, -15, -15, 5.5, 5.0) + _g(x, y, 15, -15, 5.5, 5.0))
    sockets = -11 * (_g(x, y, -32, 30, 15, 9) + _g(x, y, 32, 30, 15, 9))
    eyeballs = 6 * (_g(x, y, -32, 29, 8, 5) + _g(x, y, 32, 29, 8, 5))
    brow = 6 * _g(x, y, 0, 45, 1e9, 5.5) * (1 - _smoothstep(45, 68, np.abs(x)))
    cheeks = 6 * (_g(x, y, -45, 2, 14, 14) + _g(x, y, 45, 2, 14, 14))
    lips = 5 * _g(x, y, 0, -36, 19, 4.5) + 4.5 * _g(x, y, 0, -48, 16, 5)
    corners = -3 * (_g(x, y, -27, -42, 4, 4) + _g(x, y, 27, -42, 4, 4))
    chin = 9 * _g(x, y, 0, -78, 18, 11)
    return base + nose + alae + sockets + eyeballs + brow + cheeks + lips + corners + chin


# ------------------------------------------------------------------ vertices
def build_vertices():
    """Symmetric vertex set (mm) with the landmark and contour vertices first.

    Returns ``(xy (V, 2) mm, landmark_indices (68,), contour lines (17 lists))``.
    """
    pts = [tuple(p) for p in LANDMARKS_MM]
    lm_idx = list(range(68))
    contour = []
    ts = np.linspace(0.92, 0.44, 7)
    for i in range(17):
        x, y = LANDMARKS_MM[i]
        line = [i]
        if i != 8:
            for t in ts:
                pts.append((t * x, y))
                line.append(len(pts) - 1)
        contour.append(line)
    # rings around the eyes (1.45x and 1.9x the eye size) and the mouth
    extra = []
    for scale, n in ((1.45, 12), (1.9, 14)):
        a = np.linspace(0, 2 * np.pi, n, endpoint=False)
        extra += [(-32.0 + scale * 14.5 * np.cos(t), 29 + scale * 5.5 * np.sin(t)) for t in a]
    a = np.linspace(0, 2 * np.pi, 22, endpoint=False)
    extra += [(1.3 * 27 * np.cos(t), -43 + 1.45 * 11 * np.sin(t)) for t in a if np.cos(t) <= 1e-9]
    extra += [(-x, y) for x, y in extra if x < -1e-9]
    # hexagonal grid, symmetric about x = 0
    step = 6.5
    grid = []
    for r, yy in enumerate(np.arange(-95, 100, step * np.sqrt(3) / 2)):
        off = 0.0 if r % 2 == 0 else step / 2
        for xx in np.arange(off, 80, step):
            grid.append((xx, yy))
            if xx > 1e-9:
                grid.append((-xx, yy))
    poly = outline_polygon()
    cand = np.asarray(extra + grid, np.float64)
    # keep candidates inside the outline, at least 1.5 mm inside it
    ok = inside(poly, cand)
    d_edge = np.min(np.linalg.norm(cand[:, None, :] - poly[None], axis=2), axis=1)
    cand = cand[ok & (d_edge > 1.5)]
    have = np.asarray(pts)
    # greedy thinning on the image-left half, each point added with its mirror,
    # so the vertex set is exactly left-right symmetric
    outline = np.concatenate([jaw_outline(49), outline_polygon()[121:]])
    for group, gap in ((cand, 3.4), (outline, 3.0)):
        for x, y in group:
            if x > 1e-9:
                continue
            new = [(x, y)] if x > -1e-9 else [(x, y), (-x, y)]
            if len(new) == 2 and -2 * x <= gap:
                continue
            if np.min(np.hypot(*(have - (x, y)).T)) > gap:
                have = np.vstack([have] + [np.asarray(new)])
    return have, np.asarray(lm_idx), contour


def triangulate(xy: np.ndarray) -> np.ndarray:
    tri = Delaunay(xy).simplices
    c = xy[tri].mean(1)
    keep = inside(outline_polygon(), c)
    # drop triangles spanning the closed-mouth slit (between inner lips)
    L = LANDMARKS_MM
    in_mouth = inside(L[60:68], c)
    keep &= ~in_mouth
    # drop sliver triangles along the outline
    e = np.linalg.norm(xy[tri] - xy[np.roll(tri, 1, axis=1)], axis=2)
    keep &= e.max(1) < 16
    tri = tri[keep]
    # counter-clockwise seen from the camera (+z), so normals point outwards
    p = xy[tri]
    cross = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 1, 1] - p[:, 0, 1]) * (p[:, 2, 0] - p[:, 0, 0])
    tri[cross < 0] = tri[cross < 0][:, ::-1]
    return tri.astype(np.int64)


# ---------------------------------------------------------------------- bases
def rigid_modes(P: np.ndarray) -> np.ndarray:
    """(3V, 6) orthonormal infinitesimal rigid motions of points ``P`` (V, 3)."""
    V = len(P)
    c = P - P.mean(0)
    M = np.zeros((V, 3, 6))
    for a in range(3):
        M[:, a, a] = 1
    M[:, :, 3] = np.cross([1, 0, 0], c)
    M[:, :, 4] = np.cross([0, 1, 0], c)
    M[:, :, 5] = np.cross([0, 0, 1], c)
    q, _ = np.linalg.qr(M.reshape(3 * V, 6))
    return q


def _orthonormalise(B: np.ndarray, against: np.ndarray) -> np.ndarray:
    """Columns of ``B`` (3V, n) made orthonormal (Gram-Schmidt order) and
    orthogonal to the orthonormal columns of ``against``."""
    B = B - against @ (against.T @ B)
    q, r = np.linalg.qr(B)
    return q * np.sign(np.diag(r))[None, :]


def identity_basis(P_mm: np.ndarray, rng) -> np.ndarray:
    V = len(P_mm)
    d2 = np.sum((P_mm[:, None] - P_mm[None]) ** 2, axis=2)
    K = np.exp(-d2 / (2 * 45.0**2))
    w, U = np.linalg.eigh(K)
    U = U[:, ::-1][:, :80]
    cols = []
    for j in range(U.shape[1]):
        frame, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        for a in range(3):
            cols.append((U[:, j, None] * frame[:, a][None, :] * [1.0, 1.1, 1.3]).reshape(-1))
    B = np.stack(cols, 1)[:, : N_IDENTITY + 20]
    Q = _orthonormalise(B, rigid_modes(P_mm))[:, :N_IDENTITY]
    # deterministic sign: largest-magnitude entry positive
    big = np.argmax(np.abs(Q), axis=0)
    Q = Q * np.sign(Q[big, np.arange(Q.shape[1])])[None, :]
    return Q.reshape(V, 3, N_IDENTITY) * np.sqrt(3 * V / BFM_VALUES)


def expression_basis(P_mm: np.ndarray, rng) -> np.ndarray:
    V = len(P_mm)
    x, y, z = P_mm.T
    L = LANDMARKS_MM
    fields = []
    # 0 jaw opening: below the mouth slit, down and slightly back
    below = 1 - _smoothstep(-46, -40, y)
    fall = below * (1 - _smoothstep(45, 80, np.abs(x)))
    fields.append(np.stack([0 * x, -fall, -0.35 * fall], 1))
    # 1 smile: mouth corners up and out
    g = _g(x, y, -26, -42, 11, 9) + _g(x, y, 26, -42, 11, 9)
    fields.append(np.stack([np.sign(x) * 0.6 * g, g, 0.2 * g], 1))
    # 2 pucker: lips towards the mouth centre and forward
    g = _g(x, y, 0, -43, 20, 10)
    fields.append(np.stack([-x / 26 * g, -(y + 43) / 10 * 0.3 * g, 0.8 * g], 1))
    # 3 brow raise
    g = _g(x, y, -35, 46, 20, 8) + _g(x, y, 35, 46, 20, 8)
    fields.append(np.stack([0 * x, g, 0.1 * g], 1))
    # 4 eye closing: upper lids down
    g = _g(x, y, -32, 33, 11, 3.5) + _g(x, y, 32, 33, 11, 3.5)
    fields.append(np.stack([0 * x, -g, 0.1 * g], 1))
    # 5 cheek puff
    g = _g(x, y, -38, -30, 14, 14) + _g(x, y, 38, -30, 14, 14)
    fields.append(np.stack([np.sign(x) * 0.5 * g, 0 * x, g], 1))
    # 6.. localised random smooth fields around the mouth, eyes, brows, jaw
    centres = np.concatenate([L[17:], L[:17:2]])
    while len(fields) < N_EXPRESSION + 6:
        c = centres[rng.integers(len(centres))]
        s = rng.uniform(8, 22)
        g = _g(x, y, c[0], c[1], s, s * rng.uniform(0.6, 1.4))
        fields.append(g[:, None] * rng.standard_normal(3)[None, :])
    B = np.stack([f.reshape(-1) for f in fields], 1)
    Q = _orthonormalise(B, rigid_modes(P_mm))[:, :N_EXPRESSION]
    Q = Q.reshape(V, 3, N_EXPRESSION)
    mag = np.linalg.norm(Q, axis=1).max(0)
    return Q / mag[None, None, :] * (5.0 * MM)


# ---------------------------------------------------------------------- build
def build() -> dict:
    """All arrays of the model (compact-format keys, float64 / int64)."""
    rng = np.random.default_rng(SEED)
    xy, lm_idx, contour = build_vertices()
    z = height_mm(xy[:, 0], xy[:, 1])
    P = np.column_stack([xy, z])
    tri = triangulate(xy)
    idb = identity_basis(P, rng)
    exb = expression_basis(P, rng)
    mean = P * MM + 0.3 * exb[:, :, 0]
    k = np.arange(N_IDENTITY)
    e = np.arange(N_EXPRESSION)
    flat = np.concatenate([np.asarray(c, np.int64) for c in contour])
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in contour])]).astype(np.int64)
    metadata = {
        "synthetic": True,
        "generator": "scripts/make_synthetic_model.py",
        "generator_version": GENERATOR_VERSION,
        "seed": SEED,
        "note": "Synthetic geometry designed from facial proportions; not derived from the Basel Face Model or any dataset.",
        "identity_column_norm": float(np.sqrt(3 * len(P) / BFM_VALUES)),
        "expression_max_displacement_um": 5.0 * MM,
        "expression_mean": "0.3 x expression component 0 (jaw opening) included in mean",
    }
    return {
        "name": MODEL_NAME,
        "units": "micrometre",
        "source": f"dhm_data/assets/synthetic_face_model.npz (scripts/make_synthetic_model.py v{GENERATOR_VERSION}, seed {SEED})",
        "mean": mean,
        "identity_basis": idb,
        "expression_basis": exb,
        "identity_std": 6e5 * (k + 1.0) ** -0.7,
        "expression_std": 2.0 * (e + 1.0) ** -0.6,
        "landmark_indices": lm_idx.astype(np.int64),
        "triangles": tri,
        "contour_flat": flat,
        "contour_offsets": offsets,
        "metadata": metadata,
    }


def to_npz_bytes(d: dict) -> bytes:
    """Compact-format npz (float32 arrays, zip-deflated), deterministic bytes."""
    try:
        sys.path.insert(0, str(REPO))
        from dhm_data.models.formats.compact import FORMAT_MARKER, MARKER_KEY
    except ImportError:  # pragma: no cover - the format module is part of the package
        FORMAT_MARKER, MARKER_KEY = "dhm-data compact morphable model v1", "dhm_compact_format"
    arrays = {
        MARKER_KEY: np.array(FORMAT_MARKER),
        "name": np.array(d["name"]),
        "units": np.array(d["units"]),
        "source": np.array(d["source"]),
        "metadata_json": np.array(json.dumps(d["metadata"], sort_keys=True)),
    }
    for key in ("mean", "identity_basis", "expression_basis", "identity_std", "expression_std"):
        arrays[key] = np.asarray(d[key], np.float32)
    for key in ("landmark_indices", "triangles", "contour_flat", "contour_offsets"):
        arrays[key] = np.asarray(d[key], np.int32)
    buf = io.BytesIO()
    # fixed timestamps so that the same arrays give the same bytes
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.require(arrays[key], requirements="C"), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue(), compresslevel=9)
    return buf.getvalue()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ASSET, help="where to write (default: the package asset)")
    ap.add_argument("--check", action="store_true", help="only compare a fresh build with --out")
    args = ap.parse_args(argv)
    d = build()
    data = to_npz_bytes(d)
    if args.check:
        same = args.out.is_file() and args.out.read_bytes() == data
        print(f"{args.out}: {'identical to' if same else 'DIFFERS from'} a fresh build ({len(data):,} bytes)")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(args.out)
    V = d["mean"].shape[0]
    print(
        f"wrote {args.out} ({len(data):,} bytes): {V} vertices, {len(d['triangles'])} triangles, "
        f"K={d['identity_basis'].shape[2]} identity, E={d['expression_basis'].shape[2]} expression components"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

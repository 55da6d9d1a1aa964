"""Synthetic 300W-LP in the real on-disk format (docs/conventions.md section 1).

Layout written under ``out/300W_LP/``::

    AFW/ HELEN/ IBUG/ LFPW/            <name>.jpg (450x450x3 JPEG) + <name>.mat
    AFW_Flip/ ... LFPW_Flip/           mirrored copies, same names
    landmarks/AFW/ ... landmarks/LFPW/ <name>_pts.mat (pts_2d, pts_3d), non-flipped only
    Code/readme.txt

``n`` is the number of non-flipped samples (the ``_Flip`` copies double it),
spread over the subsets in the real proportions (IBUG 1,786 : AFW 5,207 :
LFPW 16,556 : HELEN 37,676; at least one each when n >= 4).  Samples come in
groups of one source "photo": ``k = 0`` is the photo's pose and ``k = 1 ...``
rotate the same face further towards profile (same identity, expression,
scale, pitch, roll, lighting and background; the landmark centroid stays
put), 4-9 steps per photo, the last ending between 60 and 88 degrees of yaw.
Names: ``AFW_<id>_<face>_<k>``, ``HELEN_<id>_<face>_<k>``,
``IBUG_image_<nnn>_<face>_<k>``, ``LFPW_image_{train,test}_<nnnn>_<k>``.

Per-image ``.mat`` (keys in the real files' order): ``pt2d`` (2,68) float64
1-based, ``roi`` (1,4) int16, ``Illum_Para`` (1,10) float64, ``Color_Para``
(1,7) float32, ``Tex_Para`` (199,1) float64, ``Shape_Para`` (199,1) float64,
``Exp_Para`` (29,1) float64, ``Pose_Para`` (1,7) float32; no ``pt3d_68``.

* ``pt2d`` is the 2D annotation of the photo (k = 0): the jaw points follow
  the visible silhouette (landmark marching).  For k > 0 it is **copied from
  k = 0**, as the real data's per-image ``pt2d`` reportedly is (the pitfall).
* ``landmarks/<SUBSET>/<name>_pts.mat``: ``pts_2d`` (68,2) the silhouette
  (marched) 2D landmarks of this very image and ``pts_3d`` (68,2) the
  projection of the fixed 3D landmark vertices, both 1-based float64.
* Photos whose index within their subset is 3 mod 10 have a neutral (all
  zero) expression, and their ``Exp_Para`` is stored as MATLAB stores an
  all-zero double array: uint8 data (``loadmat`` returns uint8 unless
  ``mat_dtype=True``).
* ``roi``: the square box 2x the size of the k = 0 landmarks' box, 1-based
  [x1, y1, x2, y2], int16, the same for all k (like ``pt2d``).
* ``_Flip`` copies: the image mirrored left-right (encoded separately);
  ``pt2d`` x -> w + 1 - x (1-based) **in the same point order** (index i is
  still the mirrored position of the original's point i; readers re-order
  with the 68-point mirror permutation), ``roi`` mirrored likewise;
  ``Pose_Para`` = [pitch, -yaw, -roll, w + 1 - tx, ty, tz, s] (the pose that
  maps the mirrored shape onto the mirrored image); every other field is the
  original's.  There are no landmark files for ``_Flip`` samples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dhm_data.errors import SynthError
from dhm_data.geometry import camera
from dhm_data.synth import Face, draw, encode_jpeg, f32, params_block, place, project, sample_face, write_mat_v5
from dhm_data.synth.render import Style, background

SUBSETS = ("AFW", "HELEN", "IBUG", "LFPW")
REAL_COUNTS = {"IBUG": 1786, "AFW": 5207, "LFPW": 16556, "HELEN": 37676}
SIZE = (450, 450)
_SUBSET_SEED = {s: i for i, s in enumerate(SUBSETS)}

README = """300W-LP -- SYNTHETIC copy written by `dhm-data synth 300wlp`.

Faces drawn from the dhm-data SYNTHETIC face model (not the Basel Face Model);
the layout, keys, shapes and dtypes are those of the real 300W-LP release
(Zhu et al., "Face Alignment Across Large Poses: A 3D Solution", CVPR 2016).
This folder stands in for the real release's Code/ folder and holds no code.
"""


def split_counts(n: int) -> dict:
    """Non-flipped samples per subset, proportional to the real counts
    (largest remainder), at least one per subset when ``n >= 4``."""
    total = sum(REAL_COUNTS.values())
    want = {s: n * REAL_COUNTS[s] / total for s in SUBSETS}
    counts = {s: int(np.floor(v)) for s, v in want.items()}
    if n >= 4:
        for s in SUBSETS:
            counts[s] = max(counts[s], 1)
    order = sorted(SUBSETS, key=lambda s: (-(want[s] - np.floor(want[s])), s))
    i = 0
    while sum(counts.values()) < n:
        counts[order[i % 4]] += 1
        i += 1
    while sum(counts.values()) > n:
        big = max(SUBSETS, key=lambda s: (counts[s], s))
        counts[big] -= 1
    return counts


def photo_stem(subset: str, j: int) -> str:
    """Name of photo ``j`` of ``subset`` without the ``_<k>`` suffix."""
    face = 1 + j % 2
    if subset == "AFW":
        return f"AFW_{1000000 + 7919 * j}_{face}"
    if subset == "HELEN":
        return f"HELEN_{100000000 + 104729 * j}_{face}"
    if subset == "IBUG":
        return f"IBUG_image_{j + 1:03d}_{face}"
    return f"LFPW_image_{'test' if j % 5 == 0 else 'train'}_{j + 1:04d}"


def mirror_pose(pose, w: int) -> np.ndarray:
    """``Pose_Para`` of the mirrored image: yaw and roll negated, tx -> w + 1 - tx."""
    p = np.asarray(pose, np.float64).copy()
    p[1], p[2], p[3] = -p[1], -p[2], w + 1 - p[3]
    return f32(p)


_NAME = re.compile(r"^(?P<subset>AFW|HELEN|IBUG|LFPW)(?P<flip>_Flip)?/(?P<stem>.+)_(?P<k>\d+)(?:\.jpg)?$")


@dataclass(frozen=True)
class PhotoPlan:
    """The samples to write of one source photo: ``subset`` (e.g. ``"IBUG"``),
    ``stem`` (the name without ``_<k>``), ``steps`` (k = 0 ... steps - 1 are
    rendered), and the steps whose original (``originals``) and ``_Flip``
    copy (``flips``) are written."""

    subset: str
    stem: str
    steps: int
    originals: frozenset
    flips: frozenset


def read_name_list(path) -> list[str]:
    """Sample names from a text file, one ``SUBSET/name`` a line (e.g.
    ``IBUG_Flip/IBUG_image_092 _01_3``: names may hold spaces), LF or CRLF
    line ends, ``.jpg`` optional, blank lines ignored.  Raises
    :class:`SynthError` naming the file and line of a name that is not a
    300W-LP sample name, and of a name listed twice."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SynthError(f"{path}: cannot read the name list ({e})") from e
    names, seen = [], {}
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip("\r\n\t")
        if not line.strip():
            continue
        m = _NAME.match(line)
        if m is None:
            raise SynthError(f"{path}:{i}: {line!r} is not a 300W-LP sample name; expected SUBSET/<name>_<k> "
                             f"with SUBSET one of {', '.join(SUBSETS)} (optionally with _Flip), e.g. IBUG/IBUG_image_008_1_0")
        name = line[: -len(".jpg")] if line.endswith(".jpg") else line
        if name in seen:
            raise SynthError(f"{path}:{i}: {name!r} is listed twice (first on line {seen[name]})")
        seen[name] = i
        names.append(name)
    if not names:
        raise SynthError(f"{path}: the name list is empty")
    return names


def plan_from_names(names: list[str]) -> list[PhotoPlan]:
    """One :class:`PhotoPlan` per source photo of ``names`` (subsets in
    :data:`SUBSETS` order, photos sorted by stem); a photo renders every
    step up to its largest listed ``k``."""
    found: dict = {}
    for name in names:
        m = _NAME.match(name)
        if m is None:
            raise SynthError(f"{name!r} is not a 300W-LP sample name (SUBSET/<name>_<k>)")
        ks = found.setdefault((m["subset"], m["stem"]), (set(), set()))
        ks[1 if m["flip"] else 0].add(int(m["k"]))
    plans = []
    for subset in SUBSETS:
        for stem in sorted(st for sub, st in found if sub == subset):
            originals, flips = found[(subset, stem)]
            steps = max(originals | flips) + 1
            plans.append(PhotoPlan(subset, stem, steps, frozenset(originals), frozenset(flips)))
    return plans


def write(root, n: int, seed: int, model, progress=None, names: list[str] | None = None, jobs: int = 1) -> dict:
    """Write the tree under ``root / "300W_LP"``: ``n`` non-flipped samples
    (and their mirrors) spread over the subsets, or, when ``names`` is given,
    exactly the samples it names (``n`` is then ignored).  ``jobs`` processes
    render photos in parallel; each photo's random stream depends only on
    (seed, subset, its index), so the bytes do not depend on ``jobs``."""
    base = root / "300W_LP"
    for s in SUBSETS:
        for d in (base / s, base / f"{s}_Flip", base / "landmarks" / s):
            d.mkdir(parents=True, exist_ok=True)
    (base / "Code").mkdir()
    (base / "Code" / "readme.txt").write_text(README)
    if names is not None:
        plans = plan_from_names(names)
        total = len(names)
        index = {s: 0 for s in SUBSETS}
        photos = []
        for plan in plans:
            photos.append((plan, index[plan.subset], False))
            index[plan.subset] += 1
        counts_all = {}
        for s in SUBSETS:
            counts_all[s] = sum(len(p.originals) for p in plans if p.subset == s)
            counts_all[f"{s}_Flip"] = sum(len(p.flips) for p in plans if p.subset == s)
    else:
        counts = split_counts(n)
        total = n
        photos = []
        for s in SUBSETS:
            left, j = counts[s], 0
            while left > 0:
                rng = np.random.default_rng(np.random.SeedSequence([int(seed), 300, _SUBSET_SEED[s], j]))
                steps = min(int(rng.integers(4, 10)), left)  # the photo's stream starts with this draw
                every = frozenset(range(steps))
                photos.append((PhotoPlan(s, photo_stem(s, j), steps, every, every), j, True))
                left -= steps
                j += 1
        counts_all = {}
        for s in SUBSETS:
            counts_all[s] = counts[s]
            counts_all[f"{s}_Flip"] = counts[s]
    truth = {k: [] for k in ("names", "pose_para", "shape_para", "exp_para", "landmarks_3d", "landmark_vertices", "pts_2d_vertices")}
    done = 0
    for photo, rows in zip(photos, _render_photos(base, photos, seed, model, jobs)):
        for key, values in rows.items():
            truth[key].extend(values)
        plan = photo[0]
        done += len(plan.originals) if names is None else len(plan.originals) + len(plan.flips)
        if progress:
            progress(done, total)
    np.savez(
        root / "synthetic_truth.npz",
        names=np.asarray(truth["names"]),
        pose_para=np.asarray(truth["pose_para"]),
        shape_para=np.asarray(truth["shape_para"]),
        exp_para=np.asarray(truth["exp_para"]),
        landmarks_3d=np.asarray(truth["landmarks_3d"]),
        landmark_vertices=np.asarray(truth["landmark_vertices"]),
        marched_vertices=np.asarray(truth["pts_2d_vertices"]),
    )
    return {
        "counts": counts_all,
        "notes": {
            "pt2d": "per-image pt2d of k>0 samples is copied from k=0 (as in the real data); landmarks/*_pts.mat hold this image's pts_2d (silhouette) and pts_3d (fixed 3D landmarks), 1-based",
            "compact_exp_para": "photos with index 3 mod 10 within their subset have an all-zero Exp_Para stored as uint8 (MATLAB's compact storage)",
            "flip": "_Flip: mirrored image, pt2d x -> w+1-x in the original point order, Pose_Para [pitch,-yaw,-roll,w+1-tx,ty,tz,s], other fields copied",
            "synthetic_truth.npz": "non-flipped samples: names (SUBSET/stem), pose_para, shape_para, exp_para, landmarks_3d (N,68,3) 0-based fixed 3D landmarks, landmark_vertices, marched_vertices (of pts_2d)",
        },
    }


def _render_chunk(base, chunk, seed, model) -> list[dict]:
    """Render and write the photos of ``chunk`` (``(plan, j, drew_steps)``
    each); returns each photo's truth rows."""
    out = []
    for plan, j, drew_steps in chunk:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 300, _SUBSET_SEED[plan.subset], j]))
        if drew_steps:
            rng.integers(4, 10)  # the step count was drawn from this stream when planning
        truth = {k: [] for k in ("names", "pose_para", "shape_para", "exp_para", "landmarks_3d", "landmark_vertices",
                                 "pts_2d_vertices")}
        _photo(base, plan.subset, j, plan.steps, rng, model, truth, stem=plan.stem, keep=(plan.originals, plan.flips))
        out.append(truth)
    return out


def _render_photos(base, photos, seed, model, jobs: int):
    """Each photo's truth rows, in the order of ``photos``; with ``jobs`` > 1
    the photos are rendered by that many processes, 32 photos a task."""
    if jobs <= 1:
        for photo in photos:
            yield from _render_chunk(base, [photo], seed, model)
        return
    from joblib import Parallel, delayed  # only for parallel runs: joblib starts worker processes

    chunks = [photos[i : i + 32] for i in range(0, len(photos), 32)]
    run = Parallel(n_jobs=jobs, return_as="generator")
    for rows in run(delayed(_render_chunk)(base, chunk, seed, model) for chunk in chunks):
        yield from rows


def _photo(base, subset, j, steps, rng, model, truth, stem: str | None = None, keep=None) -> int:
    """Render ``steps`` pose steps of photo ``j`` of ``subset`` and write them
    (all originals and mirrors, or only the steps ``keep = (originals,
    flips)`` names); returns ``steps``."""
    h, w = SIZE
    neutral = j % 10 == 3
    yaw0 = float(np.radians(rng.uniform(0, 35)) * (1 if rng.random() < 0.5 else -1))
    face0 = sample_face(model, rng, SIZE, yaw=yaw0, neutral=neutral)
    last = np.radians(rng.uniform(60, 88))
    direction = 1.0 if yaw0 >= 0 else -1.0
    yaws = [yaw0] + [direction * (abs(yaw0) + (last - abs(yaw0)) * k / max(steps - 1, 1)) for k in range(1, steps)]
    style = Style.random(rng)
    bg = background(h, w, rng)
    params = params_block(face0, rng, model, compact_exp=neutral)
    S = face0.shape(model)
    li = model.landmark_indices
    c0 = camera.model_to_image(S[li], face0.pose_para, h)[:, :2].mean(0) + 1  # 1-based centroid
    stem = photo_stem(subset, j) if stem is None else stem
    write_original = (lambda k: True) if keep is None else keep[0].__contains__
    write_flip = (lambda k: True) if keep is None else keep[1].__contains__

    pt2d0 = roi0 = None
    for k in range(steps):
        if k == 0:
            face = face0
        else:
            p = face0.pose_para
            face = Face(face0.shape_para, face0.exp_para, place(model, S, p[0], yaws[k], p[2], p[6], c0, SIZE), SIZE)
        name = f"{stem}_{k}"
        marched, mv, _, _ = project(model, face, marched=True)
        fixed, fv, _, _ = project(model, face, marched=False)
        pts_2d = camera.zero_based_to_one_based(marched[:, :2])
        pts_3d = camera.zero_based_to_one_based(fixed[:, :2])
        if k == 0:
            pt2d0 = pts_2d.copy()
            lo, hi = pt2d0.min(0), pt2d0.max(0)
            c, half = (lo + hi) / 2, (hi - lo).max()
            roi0 = np.round([c[0] - half, c[1] - half, c[0] + half, c[1] + half]).astype(np.int16).reshape(1, 4)
        img = draw(model, face, style, bg)
        pose = np.asarray(face.pose_para, np.float32).reshape(1, 7)
        mat = [("pt2d", pt2d0.T.copy()), ("roi", roi0)] + [(key, params[key]) for key in ("Illum_Para", "Color_Para", "Tex_Para", "Shape_Para", "Exp_Para")] + [("Pose_Para", pose)]
        if write_original(k):
            (base / subset / f"{name}.jpg").write_bytes(encode_jpeg(img))
            write_mat_v5(base / subset / f"{name}.mat", mat)
            write_mat_v5(base / "landmarks" / subset / f"{name}_pts.mat", [("pts_2d", pts_2d), ("pts_3d", pts_3d)])
        if write_flip(k):
            fl_pt2d = pt2d0.copy()
            fl_pt2d[:, 0] = w + 1 - fl_pt2d[:, 0]
            r = roi0.astype(np.int32).ravel()
            fl_roi = np.array([[w + 1 - r[2], r[1], w + 1 - r[0], r[3]]], np.int16)
            fl_pose = mirror_pose(face.pose_para, w).astype(np.float32).reshape(1, 7)
            fl_mat = [("pt2d", fl_pt2d.T.copy()), ("roi", fl_roi)] + mat[2:-1] + [("Pose_Para", fl_pose)]
            (base / f"{subset}_Flip" / f"{name}.jpg").write_bytes(encode_jpeg(cv2.flip(img, 1)))
            write_mat_v5(base / f"{subset}_Flip" / f"{name}.mat", fl_mat)
        if not write_original(k):
            continue

        truth["names"].append(f"{subset}/{name}")
        truth["pose_para"].append(np.asarray(face.pose_para, np.float64))
        truth["shape_para"].append(np.asarray(face.shape_para, np.float64))
        truth["exp_para"].append(np.asarray(face.exp_para, np.float64))
        truth["landmarks_3d"].append(fixed)
        truth["landmark_vertices"].append(fv)
        truth["pts_2d_vertices"].append(mv)
    return steps

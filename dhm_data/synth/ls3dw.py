"""Synthetic LS3D-W in the real on-disk format (docs/conventions.md section 3).

Writes under ``out/LS3D-W/``::

    300W-Testset-3D/{indoor,outdoor}_NNN.jpg + .t7
    AFLW2000-3D-Reannotated/image0xxxx.jpg + .t7
    Menpo-3D/image_NNNNN.jpg + .t7
    300VW-3D/{CatA,CatB,CatC,Trainset}/<video>/NNNNNN.jpg + .t7

``n`` images in all, spread over the 7 subsets in roughly the real
proportions (at least one each when n >= 7).  Still images are 450x450;
300VW frames are 480x360 (w x h) and come in videos of up to 40 frames of
one face whose pose drifts smoothly.  Each ``.t7`` is a Torch7
``torch.FloatTensor`` 68x2 of 0-based pixel x, y: the projection of the
posed **fixed** 3D landmark vertices (3D-style labels: no contour
marching), as LS3D-W's are.

Extras that are not part of the real format (clearly synthetic aids):
``LS3D-W/synthetic_landmarks_3d.npz`` (``names`` (N,) as the LS3D-W reader
names samples, ``landmarks_3d`` (N, 68, 3): 0-based x, y and depth; the file
``dhm-data fit-bfm`` accepts as 3D landmark estimates) and
``synthetic_truth.npz`` beside ``LS3D-W/`` with the true parameters.
"""

from __future__ import annotations

import numpy as np

from dhm_data.formats.t7 import t7_bytes
from dhm_data.synth import Face, draw, encode_jpeg, f32, place, project, sample_face
from dhm_data.synth.render import Style, background

STILL = ("300W-Testset-3D", "AFLW2000-3D-Reannotated", "Menpo-3D")
VIDEO = ("300VW-3D/CatA", "300VW-3D/CatB", "300VW-3D/CatC", "300VW-3D/Trainset")
SUBSETS = STILL + VIDEO
#: rough real sizes, used only as proportions
PROPORTIONS = {
    "300W-Testset-3D": 600,
    "AFLW2000-3D-Reannotated": 2000,
    "Menpo-3D": 8955,
    "300VW-3D/CatA": 62000,
    "300VW-3D/CatB": 32800,
    "300VW-3D/CatC": 26300,
    "300VW-3D/Trainset": 95000,
}
STILL_SIZE = (450, 450)
VIDEO_SIZE = (360, 480)
FRAMES_PER_VIDEO = 40


def split_counts(n: int) -> dict:
    total = sum(PROPORTIONS.values())
    want = {s: n * PROPORTIONS[s] / total for s in SUBSETS}
    counts = {s: int(np.floor(v)) for s, v in want.items()}
    if n >= len(SUBSETS):
        for s in SUBSETS:
            counts[s] = max(counts[s], 1)
    order = sorted(SUBSETS, key=lambda s: (-(want[s] - np.floor(want[s])), s))
    i = 0
    while sum(counts.values()) < n:
        counts[order[i % len(order)]] += 1
        i += 1
    while sum(counts.values()) > n:
        big = max(SUBSETS, key=lambda s: (counts[s], s))
        counts[big] -= 1
    return counts


def still_name(subset: str, j: int) -> str:
    if subset == "300W-Testset-3D":
        return f"{'indoor' if j % 2 == 0 else 'outdoor'}_{j // 2 + 1:03d}"
    if subset == "AFLW2000-3D-Reannotated":
        return f"image{2 + 2 * j:05d}"
    return f"image_{j + 1:05d}"


def write(root, n: int, seed: int, model, progress=None) -> dict:
    base = root / "LS3D-W"
    for s in SUBSETS:
        (base / s).mkdir(parents=True, exist_ok=True)
    counts = split_counts(n)
    truth = {k: [] for k in ("names", "pose_para", "shape_para", "exp_para", "landmarks_3d", "landmark_vertices")}
    done = 0

    def emit(rel, face, style, bg):
        nonlocal done
        fixed, fv, _, _ = project(model, face, marched=False)
        img = draw(model, face, style, bg)
        (base / f"{rel}.jpg").write_bytes(encode_jpeg(img))
        (base / f"{rel}.t7").write_bytes(t7_bytes(np.asarray(fixed[:, :2], np.float32)))
        truth["names"].append(rel)
        truth["pose_para"].append(np.asarray(face.pose_para, np.float64))
        truth["shape_para"].append(face.shape_para)
        truth["exp_para"].append(face.exp_para)
        truth["landmarks_3d"].append(fixed)
        truth["landmark_vertices"].append(fv)
        done += 1
        if progress:
            progress(done, n)

    for si, s in enumerate(SUBSETS):
        if s in STILL:
            for j in range(counts[s]):
                rng = np.random.default_rng(np.random.SeedSequence([int(seed), 3, si, j]))
                face = sample_face(model, rng, STILL_SIZE)
                emit(f"{s}/{still_name(s, j)}", face, Style.random(rng), background(*STILL_SIZE, rng))
            continue
        left, v = counts[s], 0
        while left > 0:
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), 3, si, 1000 + v]))
            video = f"{s}/{100 + 7 * v + si:03d}"
            (base / video).mkdir(parents=True)
            frames = min(FRAMES_PER_VIDEO, left)
            face0 = sample_face(model, rng, VIDEO_SIZE)
            style, bg = Style.random(rng), background(*VIDEO_SIZE, rng)
            S = face0.shape(model)
            p0 = np.asarray(face0.pose_para, np.float64)
            angles = p0[:3].copy()
            h, w = VIDEO_SIZE
            centre = np.array([(w + 1) / 2, (h + 1) / 2]) + rng.normal(0, 8, 2)
            drift = rng.normal(0, [0.01, 0.03, 0.01])
            for k in range(frames):
                if k:
                    drift = 0.9 * drift + rng.normal(0, [0.004, 0.012, 0.004])
                    angles = angles + drift
                    angles[1] = np.clip(angles[1], -np.radians(89), np.radians(89))
                    angles[0] = np.clip(angles[0], -0.5, 0.5)
                    angles[2] = np.clip(angles[2], -0.45, 0.45)
                    centre = centre + rng.normal(0, 1.0, 2)
                pose = place(model, S, angles[0], angles[1], angles[2], p0[6], centre, VIDEO_SIZE)
                emit(f"{video}/{k + 1:06d}", Face(face0.shape_para, face0.exp_para, f32(pose), VIDEO_SIZE), style, bg)
            left -= frames
            v += 1
    names = np.asarray(truth["names"])
    l3 = np.asarray(truth["landmarks_3d"])
    np.savez(base / "synthetic_landmarks_3d.npz", names=names, landmarks_3d=l3)
    np.savez(root / "synthetic_truth.npz", **{k: np.asarray(v) for k, v in truth.items()})
    return {
        "counts": {s: counts[s] for s in SUBSETS},
        "notes": {
            "t7": "torch.FloatTensor 68x2, 0-based pixels: projection of the fixed (not marched) 3D landmark vertices",
            "synthetic_landmarks_3d.npz": "LS3D-W/synthetic_landmarks_3d.npz: names (reader sample names), landmarks_3d (N,68,3) 0-based x, y, depth -- a synthetic aid, not part of the real format",
            "synthetic_truth.npz": "names, pose_para, shape_para, exp_para, landmarks_3d, landmark_vertices (true parameters for evaluating fits)",
        },
    }

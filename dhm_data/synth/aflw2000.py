"""Synthetic AFLW2000-3D in the real on-disk format (docs/conventions.md section 2).

Writes ``out/AFLW2000/image0xxxx.jpg`` (450x450x3 JPEG) + ``.mat`` for ``n``
images; the ids are ``n`` distinct numbers drawn from 2..4375 like the real
ones (consecutive from 2 when n > 4374); sorted file-name order is the
benchmark order.  Poses follow the AFLW2000-3D yaw bins (65.6 % of |yaw| in
[0, 30], 19.2 % in (30, 60], 15.3 % in (60, 90) degrees).

``.mat`` keys in the real files' order: ``pt2d`` (2,21) float64,
``Illum_Para`` (1,10) float64, ``Color_Para`` (1,7) float32, ``Tex_Para``
(199,1) float64, ``Shape_Para`` (199,1) float64, ``Exp_Para`` (29,1) float64,
``Pose_Para`` (1,7) float32, ``roi`` (1,4) int16, ``pt3d_68`` (3,68) float32.

* ``pt3d_68``: ``camera.model_to_image`` of the landmark vertices of the
  reconstructed shape, plus 1 in x and y (1-based), z the transformed depth;
  the 17 jaw points are marched to the silhouette
  (:func:`dhm_data.synth.march_landmarks`).
* ``pt2d``: the AFLW 21-point markup in image order (brows 17, 19, 21, 22,
  24, 26; eyes 36, centre of 37/38/40/41, 39, 42, centre of 43/44/46/47,
  45; image-left ear; nose 31, 30, 35; image-right ear; mouth 48, centre of
  62/66, 54; chin 8; ears sit just outside and behind the jaw ends) as
  1-based pixels of the fixed 3D points; a point whose surface faces away
  from the camera is stored as the real files store invisible points:
  ``(-1, h + 1 - (-1))`` = (-1, 452).
* ``roi``: like the real one, a square box in a (fictitious) original photo
  frame: the landmark box doubled, scaled by a random factor in [0.4, 3] and
  shifted; it is NOT a face box of this image.
* Images whose index in sorted order is 3 mod 10 have an all-zero
  expression stored as MATLAB's compact uint8.
"""

from __future__ import annotations

import numpy as np

from dhm_data.geometry import camera
from dhm_data.synth import draw, encode_jpeg, params_block, project, sample_face, write_mat_v5
from dhm_data.synth.render import Style, background, vertex_normals

SIZE = (450, 450)
#: (label, 68-point indices averaged) of the 21 AFLW points, image order
AFLW21 = (
    ("brow_l_outer", (17,)), ("brow_l_centre", (19,)), ("brow_l_inner", (21,)),
    ("brow_r_inner", (22,)), ("brow_r_centre", (24,)), ("brow_r_outer", (26,)),
    ("eye_l_outer", (36,)), ("eye_l_centre", (37, 38, 40, 41)), ("eye_l_inner", (39,)),
    ("eye_r_inner", (42,)), ("eye_r_centre", (43, 44, 46, 47)), ("eye_r_outer", (45,)),
    ("ear_l", ()), ("nose_l", (31,)), ("nose_centre", (30,)), ("nose_r", (35,)), ("ear_r", ()),
    ("mouth_l", (48,)), ("mouth_centre", (62, 66)), ("mouth_r", (54,)), ("chin", (8,)),
)


def aflw21(model, shape, pose_para, h):
    """The 21 AFLW points: ``(21, 2)`` 0-based pixels and ``(21,)`` visibility.

    Visibility: the mean posed vertex normal of the point's landmark vertices
    has a positive component towards the camera (> 0.2 of its length); ears
    use the model-space direction (+-1, 0, 0.15) (sideways, slightly forward).
    """
    li = np.asarray(model.landmark_indices)
    verts = camera.model_to_image(shape, pose_para, h)
    normals = vertex_normals(verts, model.triangles)
    L = shape[li]
    width = float(np.linalg.norm(L[16] - L[0]))
    out = np.zeros((21, 3))
    vis = np.zeros(21, bool)
    R = camera.rotation_from_angles(*np.asarray(pose_para, np.float64)[:3])
    for i, (label, idx) in enumerate(AFLW21):
        if idx:
            out[i] = verts[li[list(idx)]].mean(0)
            n = normals[li[list(idx)]].mean(0)
            vis[i] = n[2] > 0.2 * np.linalg.norm(n)
        else:
            j, other, side = (1, 15, -1.0) if label == "ear_l" else (15, 1, 1.0)
            lateral = (L[j] - L[other]) / np.linalg.norm(L[j] - L[other])
            ear = L[j] + 0.04 * width * lateral + np.array([0, 0, -0.15 * width])
            out[i] = camera.model_to_image(ear[None], pose_para, h)[0]
            d = np.array([side, 0.0, 0.15])
            vis[i] = (R @ d)[2] > 0
    return out[:, :2], vis


def write(root, n: int, seed: int, model, progress=None) -> dict:
    base = root / "AFLW2000"
    base.mkdir(parents=True)
    h, w = SIZE
    pick = np.random.default_rng(np.random.SeedSequence([int(seed), 2000]))
    ids = np.arange(2, 2 + n) if n > 4374 else np.sort(pick.choice(np.arange(2, 4376), n, replace=False))
    truth = {k: [] for k in ("names", "pose_para", "shape_para", "exp_para", "landmarks_3d", "landmark_vertices", "pt3d_vertices")}
    for i, image_id in enumerate(ids):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2000, int(image_id)]))
        neutral = i % 10 == 3
        face = sample_face(model, rng, SIZE, neutral=neutral)
        style = Style.random(rng)
        bg = background(h, w, rng)
        params = params_block(face, rng, model, compact_exp=neutral)
        marched, mv, _, S = project(model, face, marched=True)
        fixed, fv, _, _ = project(model, face, marched=False)
        pt3d = marched.copy()
        pt3d[:, :2] += 1.0
        p21, vis = aflw21(model, S, face.pose_para, h)
        p21 = camera.zero_based_to_one_based(p21)
        p21[~vis] = [-1.0, h + 1 - (-1.0)]
        lo, hi = marched[:, :2].min(0), marched[:, :2].max(0)
        f = rng.uniform(0.4, 3.0)
        c = (lo + hi) / 2 * f + rng.uniform(-100, 300, 2)
        half = (hi - lo).max() * f
        roi = np.round([c[0] - half, c[1] - half, c[0] + half, c[1] + half]).astype(np.int16).reshape(1, 4)
        name = f"image{int(image_id):05d}"
        mat = [("pt2d", p21.T.copy())] + [(k, params[k]) for k in ("Illum_Para", "Color_Para", "Tex_Para", "Shape_Para", "Exp_Para", "Pose_Para")]
        mat += [("roi", roi), ("pt3d_68", np.asarray(pt3d.T, np.float32))]
        img = draw(model, face, style, bg)
        (base / f"{name}.jpg").write_bytes(encode_jpeg(img))
        write_mat_v5(base / f"{name}.mat", mat)
        truth["names"].append(name)
        truth["pose_para"].append(np.asarray(face.pose_para, np.float64))
        truth["shape_para"].append(face.shape_para)
        truth["exp_para"].append(face.exp_para)
        truth["landmarks_3d"].append(fixed)
        truth["landmark_vertices"].append(fv)
        truth["pt3d_vertices"].append(mv)
        if progress:
            progress(i + 1, n)
    np.savez(root / "synthetic_truth.npz", **{k: np.asarray(v) for k, v in truth.items()})
    return {
        "counts": {"AFLW2000": int(n)},
        "notes": {
            "pt3d_68": "model_to_image of the marched landmark vertices + 1 (x, y); z the transformed depth",
            "pt2d": "AFLW 21 points, 1-based; invisible points stored as (-1, h+1-(-1)) = (-1, 452)",
            "roi": "square box in a fictitious original-photo frame, not a face box of this image (as in the real data)",
            "compact_exp_para": "images with sorted index 3 mod 10 have an all-zero Exp_Para stored as uint8 (MATLAB's compact storage)",
            "synthetic_truth.npz": "names, pose_para, shape_para, exp_para, landmarks_3d (N,68,3) 0-based fixed 3D landmarks, landmark_vertices, pt3d_vertices (marched)",
        },
    }

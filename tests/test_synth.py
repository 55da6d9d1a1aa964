"""The packaged SYNTHETIC face model and `dhm-data synth` (exact on-disk formats)."""

import hashlib
import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from dhm_data.errors import SynthError
from dhm_data.geometry import camera
from dhm_data.geometry.landmarks68 import MIRROR_68
from dhm_data.models.synthetic import SYNTHETIC_MODEL_ID, load_synthetic_model, synthetic_model_path
from dhm_data.synth import march_landmarks, synthesize

REPO = Path(__file__).resolve().parents[1]

LP_KEYS = {
    "pt2d": ((2, 68), np.float64),
    "roi": ((1, 4), np.int16),
    "Illum_Para": ((1, 10), np.float64),
    "Color_Para": ((1, 7), np.float32),
    "Tex_Para": ((199, 1), np.float64),
    "Shape_Para": ((199, 1), np.float64),
    "Exp_Para": ((29, 1), np.float64),
    "Pose_Para": ((1, 7), np.float32),
}
AFLW_KEYS = {  # the real files' order
    "pt2d": ((2, 21), np.float64),
    **{k: LP_KEYS[k] for k in ("Illum_Para", "Color_Para", "Tex_Para", "Shape_Para", "Exp_Para", "Pose_Para", "roi")},
    "pt3d_68": ((3, 68), np.float32),
}


def _keys(mat):
    return [k for k in mat if not k.startswith("__")]


def _imread_rgb(p):
    return cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _shape_from_mat(model, mat):
    a = np.asarray(mat["Shape_Para"], np.float64).ravel()
    b = np.asarray(mat["Exp_Para"], np.float64).ravel()
    return model.reconstruct(a[: model.n_identity], b[: model.n_expression])


@pytest.fixture(scope="module")
def model():
    return load_synthetic_model()


@pytest.fixture(scope="module")
def lp_tree(tmp_path_factory):
    return synthesize("300wlp", tmp_path_factory.mktemp("lp") / "tree", 48, seed=7)


@pytest.fixture(scope="module")
def aflw_tree(tmp_path_factory):
    return synthesize("aflw2000", tmp_path_factory.mktemp("aflw") / "tree", 40, seed=11)


@pytest.fixture(scope="module")
def ls_tree(tmp_path_factory):
    return synthesize("ls3dw", tmp_path_factory.mktemp("ls") / "tree", 60, seed=5)


# ------------------------------------------------------------------ the model
def test_model_is_named_synthetic_and_has_the_real_sizes(model):
    assert "SYNTHETIC" in model.name and "not BFM" in model.name
    assert model.n_identity == 199 and model.n_expression == 29
    assert model.units == "micrometre"
    assert model.metadata["synthetic"] is True
    assert np.all(model.landmark_indices >= 0)
    assert model.triangles.shape[1] == 3 and model.triangles.max() < model.n_vertices
    assert 300 < model.n_vertices < 5000
    assert synthetic_model_path().stat().st_size < 2_000_000


def test_model_prior_decays_and_identity_is_orthogonal(model):
    assert np.all(np.diff(model.identity_std) < 0) and np.all(np.diff(model.expression_std) < 0)
    assert model.identity_std[0] / model.identity_std[-1] > 10
    B = model.identity_basis.reshape(-1, 199)
    G = B.T @ B
    norm = 3 * model.n_vertices / (53215 * 3)
    np.testing.assert_allclose(np.diag(G), norm, rtol=1e-5)
    assert np.abs(G - np.diag(np.diag(G))).max() < 1e-5 * norm
    # no rigid translation hidden in the identity basis
    assert np.abs(model.identity_basis.mean(axis=0)).max() < 1e-3 * np.abs(model.identity_basis).max()
    # expression: 5 mm largest displacement per unit coefficient (Exp_Para of order 1)
    np.testing.assert_allclose(np.linalg.norm(model.expression_basis, axis=1).max(0), 5000, rtol=1e-5)


def test_model_geometry_is_a_plausible_face(model):
    L = model.mean[model.landmark_indices] / 1000.0  # mm
    width = L[16, 0] - L[0, 0]
    assert 130 < width < 170  # BFM-like face width ~ 150,000 um
    assert L[0, 0] < 0 < L[16, 0]  # point 0 is the image-left jaw end
    eye_y = L[36:48, 1].mean()
    assert L[17:27, 1].min() > eye_y > L[30, 1] > L[51, 1] > L[57, 1] > L[8, 1]  # brows > eyes > nose tip > mouth > chin
    assert np.argmax(L[:, 2]) == 30  # the nose tip is the most forward landmark
    assert L[36:42, 0].max() < 0 < L[42:48, 0].min()
    assert 55 < np.linalg.norm(L[36:42].mean(0) - L[42:48].mean(0)) < 75  # inter-pupil distance (mm)
    # left-right symmetric mean landmarks and vertex set
    mirrored = L[MIRROR_68] * [-1, 1, 1]
    assert np.abs(mirrored - L).max() < 0.01
    V = model.mean / 1000.0
    d = np.min(np.linalg.norm(V[:, None, :] - (V * [-1, 1, 1])[None], axis=2), axis=1)
    assert d.max() < 0.01


def test_model_contour_candidates_for_marching(model):
    cc = model.contour_candidates
    assert len(cc) == 17
    for i, line in enumerate(cc):
        assert line[0] == model.landmark_indices[i]
        assert len(line) == (1 if i == 8 else 8)
        y, x = model.mean[line, 1], model.mean[line, 0]
        assert np.ptp(y) < 1000  # a horizontal line (within 1 mm; the mean carries an expression mean)
        assert np.all(np.diff(np.abs(x)) < 0)  # from the outline inwards
    # frontal: marching keeps the outline; turned: the far side moves inwards
    S = model.mean
    front = march_landmarks(model, S, np.array([0, 0, 0, 0, 0, 0, 1e-3]))
    np.testing.assert_array_equal(front, model.landmark_indices)
    turned = march_landmarks(model, S, np.array([0, np.radians(60), 0, 0, 0, 0, 1e-3]))
    moved = np.flatnonzero(turned != model.landmark_indices)
    assert len(moved) >= 3 and set(moved) <= set(range(17))


def _oriented_triangles(triangles) -> set:
    """Each triangle rotated to start at its smallest vertex (keeps the winding)."""
    out = set()
    for t in np.asarray(triangles).tolist():
        k = t.index(min(t))
        out.add(tuple(t[k:] + t[:k]))
    return out


def _sign_aligned(basis, reference):
    """``basis`` with each component (last axis) negated where that matches ``reference`` better."""
    b = np.asarray(basis, np.float64)
    flip = np.sum(b * reference, axis=tuple(range(b.ndim - 1))) < 0
    return np.where(flip, -b, b)


def test_generator_script_reproduces_the_asset(model):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_synthetic_model as gen
    finally:
        sys.path.pop(0)
    d = gen.build()
    # Delaunay's triangle order (and where each triangle starts) varies with
    # the qhull build; the faces and their winding must not
    assert _oriented_triangles(d["triangles"]) == _oriented_triangles(model.triangles)
    assert len(d["triangles"]) == len(model.triangles)
    np.testing.assert_array_equal(d["landmark_indices"], model.landmark_indices)
    np.testing.assert_allclose(d["mean"], model.mean, rtol=0, atol=0.05)  # float32 storage, micrometres
    # a principal component's sign is arbitrary (LAPACK builds differ): compare up to sign
    np.testing.assert_allclose(_sign_aligned(d["identity_basis"], model.identity_basis), model.identity_basis,
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(_sign_aligned(d["expression_basis"], model.expression_basis), model.expression_basis,
                               rtol=0, atol=1e-3)


# ------------------------------------------------------------------- 300W-LP
def test_300wlp_layout_names_and_marker(lp_tree):
    base = lp_tree / "300W_LP"
    marker = json.loads((lp_tree / "SYNTHETIC.json").read_text())
    assert marker["model"] == SYNTHETIC_MODEL_ID and marker["n"] == 48 and marker["seed"] == 7
    assert "SYNTHETIC" in marker["model_name"]
    assert (base / "Code").is_dir()
    total = 0
    pattern = {
        "AFW": r"AFW_\d+_\d_\d+", "HELEN": r"HELEN_\d+_\d_\d+", "IBUG": r"IBUG_image_\d{3}_\d_\d+", "LFPW": r"LFPW_image_(train|test)_\d{4}_\d+",
    }
    for s in ("AFW", "HELEN", "IBUG", "LFPW"):
        stems = sorted(p.stem for p in (base / s).glob("*.jpg"))
        assert stems == sorted(p.stem for p in (base / s).glob("*.mat"))
        assert stems == sorted(p.stem for p in (base / f"{s}_Flip").glob("*.jpg"))
        assert stems == sorted(p.name[:-8] for p in (base / "landmarks" / s).glob("*_pts.mat"))
        assert len(stems) == marker["counts"][s] == marker["counts"][f"{s}_Flip"] >= 1
        for st in stems:
            assert re.fullmatch(pattern[s], st), st
        photos = {st.rsplit("_", 1)[0] for st in stems}
        for ph in photos:  # every photo has its original k = 0 and k = 0..m-1 without gaps
            ks = sorted(int(st.rsplit("_", 1)[1]) for st in stems if st.rsplit("_", 1)[0] == ph)
            assert ks == list(range(len(ks)))
        total += len(stems)
    assert total == 48
    assert not any(p.name.startswith(".") for p in lp_tree.parent.iterdir())  # no temporary leftovers


def test_300wlp_mat_keys_shapes_dtypes(lp_tree):
    files = sorted((lp_tree / "300W_LP").glob("*/*.mat"))
    assert len(files) == 96
    n_compact = 0
    for f in files:
        m = scipy.io.loadmat(f)
        assert _keys(m) == list(LP_KEYS), f
        for k, (shape, dtype) in LP_KEYS.items():
            assert m[k].shape == shape, (f, k)
            if k == "Exp_Para" and m[k].dtype == np.uint8:
                n_compact += 1
                assert not m[k].any()
                assert scipy.io.loadmat(f, mat_dtype=True)[k].dtype == np.float64
                continue
            assert m[k].dtype == dtype, (f, k, m[k].dtype)
        assert m["__header__"].startswith(b"MATLAB 5.0 MAT-file")
    assert n_compact >= 2  # photo index 3 mod 10 (and its flips) are stored compactly
    lm = scipy.io.loadmat(next((lp_tree / "300W_LP" / "landmarks").glob("*/*_pts.mat")))
    assert _keys(lm) == ["pts_2d", "pts_3d"]
    assert lm["pts_2d"].shape == lm["pts_3d"].shape == (68, 2) and lm["pts_2d"].dtype == np.float64


def test_300wlp_matches_the_real_sample_file(lp_tree, lp_samples_dir):
    real = scipy.io.loadmat(lp_samples_dir / "IBUG_image_008_1_0.mat")
    syn = scipy.io.loadmat(next((lp_tree / "300W_LP" / "IBUG").glob("*_0.mat")))
    assert _keys(real) == _keys(syn)
    for k in _keys(real):
        assert syn[k].shape == real[k].shape and syn[k].dtype == real[k].dtype, k
    # parameters in the real ranges (micrometre model, s ~ 1e-3)
    assert 0.5e-3 < syn["Pose_Para"][0, 6] < 3e-3
    assert 1e4 < np.abs(syn["Shape_Para"]).max() < 5e6
    h, w = cv2.imread(str(lp_samples_dir / "IBUG_image_008_1_0.jpg")).shape[:2]
    assert cv2.imread(str(next((lp_tree / "300W_LP" / "IBUG").glob("*.jpg")))).shape == (h, w, 3) == (450, 450, 3)


def test_300wlp_labels_reproject_from_parameters(lp_tree, model):
    base = lp_tree / "300W_LP"
    for f in sorted(base.glob("[A-Z]*[!p]/*.mat")):
        if f.parent.name.endswith("_Flip") or f.parent.name in ("landmarks", "Code"):
            continue
        m = scipy.io.loadmat(f, mat_dtype=True)
        lm = scipy.io.loadmat(base / "landmarks" / f.parent.name / f"{f.stem}_pts.mat")
        S = _shape_from_mat(model, m)
        pose = m["Pose_Para"].ravel()
        fixed = camera.model_to_image(S[model.landmark_indices], pose, 450)[:, :2] + 1
        np.testing.assert_allclose(lm["pts_3d"], fixed, atol=1e-6)
        marched = camera.model_to_image(S[march_landmarks(model, S, pose)], pose, 450)[:, :2] + 1
        np.testing.assert_allclose(lm["pts_2d"], marched, atol=1e-6)
        np.testing.assert_array_equal(lm["pts_2d"][17:], lm["pts_3d"][17:])
        k0 = scipy.io.loadmat(f.with_name(f.stem.rsplit("_", 1)[0] + "_0.mat"))
        np.testing.assert_array_equal(m["pt2d"], k0["pt2d"])  # the pitfall: copied from k = 0
        if f.stem.endswith("_0"):
            np.testing.assert_allclose(m["pt2d"].T, lm["pts_2d"], atol=1e-9)


def test_300wlp_rotated_steps_turn_the_same_face(lp_tree):
    base = lp_tree / "300W_LP" / "HELEN"
    photo = sorted(p.stem.rsplit("_", 1)[0] for p in base.glob("*_1.mat"))[0]
    mats = sorted(base.glob(f"{photo}_*.mat"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    assert len(mats) >= 2
    ms = [scipy.io.loadmat(p, mat_dtype=True) for p in mats]
    yaws = np.array([abs(m["Pose_Para"][0, 1]) for m in ms])
    assert np.all(np.diff(yaws) > 0) and yaws[-1] > np.radians(59)
    for m in ms[1:]:
        for k in ("Shape_Para", "Exp_Para", "Tex_Para", "Illum_Para", "Color_Para"):
            np.testing.assert_array_equal(m[k], ms[0][k])
        np.testing.assert_array_equal(m["Pose_Para"][0, [0, 2, 6]], ms[0]["Pose_Para"][0, [0, 2, 6]])


def test_300wlp_flip_copies_are_exact_mirrors(lp_tree):
    base = lp_tree / "300W_LP"
    for f in sorted((base / "AFW").glob("*.mat")) + sorted((base / "IBUG").glob("*.mat")):
        g = base / f"{f.parent.name}_Flip" / f.name
        m, fm = scipy.io.loadmat(f), scipy.io.loadmat(g)
        assert _keys(fm) == _keys(m)
        np.testing.assert_allclose(fm["pt2d"][0], 451 - m["pt2d"][0])  # 1-based: x -> w + 1 - x, same order
        np.testing.assert_array_equal(fm["pt2d"][1], m["pt2d"][1])
        p, q = m["Pose_Para"].ravel().astype(np.float64), fm["Pose_Para"].ravel().astype(np.float64)
        np.testing.assert_allclose(q, [p[0], -p[1], -p[2], 451 - p[3], p[4], p[5], p[6]], rtol=1e-6)
        for k in ("Shape_Para", "Exp_Para", "Tex_Para", "Illum_Para", "Color_Para"):
            np.testing.assert_array_equal(fm[k], m[k])
        r, fr = m["roi"].ravel().astype(int), fm["roi"].ravel().astype(int)
        assert list(fr) == [451 - r[2], r[1], 451 - r[0], r[3]]
        a = _imread_rgb(f.with_suffix(".jpg")).astype(float)
        b = _imread_rgb(g.with_suffix(".jpg")).astype(float)
        assert np.abs(a[:, ::-1] - b).mean() < 2.0  # mirrored pixels (two separate JPEG encodings)
        assert np.abs(a - b).mean() > 10  # and not the same picture


def test_300wlp_reader_reads_the_tree(lp_tree, model):
    from dhm_data.datasets.w300lp import Reader

    r = Reader(lp_tree)
    items = r.items()
    assert len(items) == 96 and sum(it.flipped for it in items) == 48
    assert r.synthetic_marker()["model"] == SYNTHETIC_MODEL_ID
    s = r.load(items[0])
    assert s.landmark_source == "landmarks/pts_3d"
    truth = np.load(lp_tree / "synthetic_truth.npz")
    i = list(truth["names"]).index(s.name)
    np.testing.assert_allclose(s.landmarks_2d, truth["landmarks_3d"][i][:, :2], atol=1e-6)


# ---------------------------------------------------------------- AFLW2000-3D
def test_aflw_mat_keys_shapes_dtypes_and_real_sample(aflw_tree, aflw_samples_dir):
    files = sorted((aflw_tree / "AFLW2000").glob("*.mat"))
    assert len(files) == 40 and all(re.fullmatch(r"image\d{5}", f.stem) for f in files)
    compact = []
    for f in files:
        m = scipy.io.loadmat(f)
        assert _keys(m) == list(AFLW_KEYS)
        for k, (shape, dtype) in AFLW_KEYS.items():
            assert m[k].shape == shape
            if k == "Exp_Para" and m[k].dtype == np.uint8:
                compact.append(f.stem)
                continue
            assert m[k].dtype == dtype, (f, k)
        assert cv2.imread(str(f.with_suffix(".jpg"))).shape == (450, 450, 3)
    assert compact == [files[i].stem for i in range(3, 40, 10)]  # sorted index 3 mod 10
    real = scipy.io.loadmat(aflw_samples_dir / "image00050.mat")
    syn = scipy.io.loadmat(files[0])
    assert _keys(real) == _keys(syn)
    assert all(real[k].shape == syn[k].shape and real[k].dtype == syn[k].dtype for k in _keys(real))


def test_aflw_pt3d_is_model_to_image_plus_one(aflw_tree, model):
    for f in sorted((aflw_tree / "AFLW2000").glob("*.mat")):
        m = scipy.io.loadmat(f, mat_dtype=True)
        S = _shape_from_mat(model, m)
        pose = m["Pose_Para"].ravel()
        want = camera.model_to_image(S[march_landmarks(model, S, pose)], pose, 450)
        want[:, :2] += 1
        np.testing.assert_allclose(m["pt3d_68"].T, want, atol=2e-3)


def test_aflw_pt3d_agrees_with_the_fitting_module(aflw_tree, model):
    """The synthetic labels use the same landmark marching as the fitter, so a
    perfect fit reproduces them exactly."""
    try:
        from dhm_data.fit import posed_model_landmarks
    except ImportError as e:  # pragma: no cover - fitting module absent in a partial checkout
        pytest.skip(f"dhm_data.fit not available: {e}")
    mats = [scipy.io.loadmat(f, mat_dtype=True) for f in sorted((aflw_tree / "AFLW2000").glob("*.mat"))]
    a = np.stack([m["Shape_Para"].ravel() for m in mats])
    b = np.stack([m["Exp_Para"].ravel() for m in mats])
    p = np.stack([m["Pose_Para"].ravel() for m in mats])
    P, _ = posed_model_landmarks(model, a, b, p, 450)
    P[..., :2] += 1
    np.testing.assert_allclose(np.stack([m["pt3d_68"].T for m in mats]), P, atol=2e-3)


def test_aflw_pt2d_invisible_encoding(aflw_tree):
    n_invisible = 0
    for f in sorted((aflw_tree / "AFLW2000").glob("*.mat")):
        m = scipy.io.loadmat(f)
        p, pt3d = m["pt2d"], m["pt3d_68"].astype(np.float64)
        inv = p[0] == -1
        n_invisible += inv.sum()
        np.testing.assert_array_equal(p[1, inv], 450 + 1 - (-1))
        assert np.all(p[:, ~inv] > 0)
        # visible eye corners and mouth corners are the 68-point ones
        for i21, i68 in ((6, 36), (8, 39), (9, 42), (11, 45), (17, 48), (19, 54), (20, 8)):
            if not inv[i21]:
                np.testing.assert_allclose(p[:, i21], pt3d[:2, i68], atol=1e-3)
        yaw = abs(m["Pose_Para"][0, 1])
        if yaw > np.radians(60):
            assert inv.sum() >= 3  # the far side of a profile is hidden
    assert n_invisible > 0


def test_aflw_reader_and_yaw_distribution(aflw_tree):
    from dhm_data.datasets.aflw2000 import Reader

    r = Reader(aflw_tree)
    samples = list(r.samples())
    assert [s.name for s in samples] == sorted(s.name for s in samples)
    yaws = np.abs([s.extra["yaw_deg"] for s in samples])
    assert yaws.max() <= 90 and (yaws > 30).any() and (yaws <= 30).sum() > len(yaws) / 3


# ------------------------------------------------- labels sit on image features
def _features_ok(img, pts0):
    """Dark iris at each eye centre, red lips between outer and inner lip,
    dark brow at the brow centre; pts0 (68, 2) 0-based."""
    def px(p):
        x, y = int(round(p[0])), int(round(p[1]))
        return img[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).mean(0)

    checks = []
    for eye in ((37, 38, 40, 41), (43, 44, 46, 47)):
        c = px(pts0[list(eye)].mean(0))
        checks.append(c.max() < 110)
    for upper, lower in ((51, 62), (57, 66)):
        c = px((pts0[upper] + pts0[lower]) / 2)
        checks.append(c[0] > c[1] + 60 and c[0] > c[2] + 50)
    for brow in (19, 24):
        checks.append(px(pts0[brow]).max() < 110)
    return checks


def test_labels_sit_on_the_rendered_features(aflw_tree, lp_tree):
    tested = 0
    for f in sorted((aflw_tree / "AFLW2000").glob("*.mat")):
        m = scipy.io.loadmat(f)
        pitch, yaw = np.degrees(m["Pose_Para"][0, :2])
        if abs(yaw) > 20 or abs(pitch) > 20:
            continue
        img = _imread_rgb(f.with_suffix(".jpg"))
        pts0 = m["pt3d_68"][:2].T.astype(np.float64) - 1
        assert all(_features_ok(img, pts0)), f
        # control: the same checks half a face-width to the side fail
        shifted = pts0 + [0.5 * (pts0[16, 0] - pts0[0, 0]), 0]
        assert not all(_features_ok(img, shifted))
        tested += 1
    base = lp_tree / "300W_LP"
    for f in sorted((base / "landmarks").glob("*/*_0_pts.mat")) + sorted((base / "landmarks").glob("LFPW/*_0_pts.mat")):
        pose = scipy.io.loadmat(base / f.parent.name / f"{f.name[:-8]}.mat")["Pose_Para"][0]
        if abs(np.degrees(pose[1])) > 20 or abs(np.degrees(pose[0])) > 20:
            continue
        img = _imread_rgb(base / f.parent.name / f"{f.name[:-8]}.jpg")
        pts0 = scipy.io.loadmat(f)["pts_3d"] - 1
        assert all(_features_ok(img, pts0)), f
        # the mirrored copy carries the mirrored features
        fimg = _imread_rgb(base / f"{f.parent.name}_Flip" / f"{f.name[:-8]}.jpg")
        mirrored = pts0[MIRROR_68] * [-1, 1] + [449, 0]
        assert all(_features_ok(fimg, mirrored)), f
        tested += 1
    assert tested >= 8


def test_face_fills_a_sensible_part_of_the_image(aflw_tree):
    for f in sorted((aflw_tree / "AFLW2000").glob("*.mat")):
        p = scipy.io.loadmat(f)["pt3d_68"][:2] - 1
        size = max(np.ptp(p[0]), np.ptp(p[1]))
        assert 90 < size < 330
        assert p.min() > -20 and p.max() < 470


# --------------------------------------------------------------------- LS3D-W
def test_ls3dw_layout_t7_and_truth(ls_tree, model):
    torchfile = pytest.importorskip("torchfile")
    base = ls_tree / "LS3D-W"
    marker = json.loads((ls_tree / "SYNTHETIC.json").read_text())
    for s in ("300W-Testset-3D", "AFLW2000-3D-Reannotated", "Menpo-3D"):
        assert len(list((base / s).glob("*.jpg"))) == marker["counts"][s] >= 1
    for cat in ("CatA", "CatB", "CatC", "Trainset"):
        videos = [d for d in (base / "300VW-3D" / cat).iterdir() if d.is_dir()]
        assert videos and all(re.fullmatch(r"\d{3}", d.name) for d in videos)
        assert sum(len(list(d.glob("*.jpg"))) for d in videos) == marker["counts"][f"300VW-3D/{cat}"]
    truth = np.load(ls_tree / "synthetic_truth.npz")
    l3 = np.load(base / "synthetic_landmarks_3d.npz")
    assert list(l3["names"]) == list(truth["names"]) and l3["landmarks_3d"].shape == (60, 68, 3)
    for i, name in enumerate(truth["names"]):
        jpg, t7 = base / f"{name}.jpg", base / f"{name}.t7"
        got = torchfile.load(str(t7))
        assert got.dtype == np.float32 and got.shape == (68, 2)
        np.testing.assert_array_equal(got, truth["landmarks_3d"][i][:, :2].astype(np.float32))
        h = 360 if name.startswith("300VW") else 450
        assert cv2.imread(str(jpg)).shape == (h, 480 if h == 360 else 450, 3)
        S = model.reconstruct(truth["shape_para"][i], truth["exp_para"][i])
        want = camera.model_to_image(S[model.landmark_indices], truth["pose_para"][i], h)
        np.testing.assert_allclose(truth["landmarks_3d"][i], want, atol=1e-6)


def test_ls3dw_reader_names_match_the_3d_landmark_file(ls_tree):
    from dhm_data.datasets.ls3dw import Reader

    r = Reader(ls_tree)
    items = r.items()
    l3 = np.load(ls_tree / "LS3D-W" / "synthetic_landmarks_3d.npz")
    assert sorted(it.name for it in items) == sorted(l3["names"])
    s = r.load(items[0])
    i = list(l3["names"]).index(s.name)
    np.testing.assert_allclose(s.landmarks_2d, l3["landmarks_3d"][i][:, :2], atol=1e-4)


# ------------------------------------------------ determinism, atomicity, CLI
def test_same_seed_same_bytes(tmp_path):
    for ds, n in (("300wlp", 6), ("aflw2000", 4), ("ls3dw", 8)):
        a = synthesize(ds, tmp_path / f"{ds}-a", n, seed=3)
        b = synthesize(ds, tmp_path / f"{ds}-b", n, seed=3)
        c = synthesize(ds, tmp_path / f"{ds}-c", n, seed=4)
        assert _tree_hash(a) == _tree_hash(b)
        assert _tree_hash(a) != _tree_hash(c)


def test_refuses_non_empty_out_and_interrupt_leaves_nothing(tmp_path):
    out = tmp_path / "t"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(SynthError, match=r"not empty.*--force"):
        synthesize("aflw2000", out, 2, seed=0)
    assert (out / "keep.txt").exists()
    synthesize("aflw2000", out, 2, seed=0, force=True)
    assert not (out / "keep.txt").exists() and (out / "SYNTHETIC.json").is_file()

    def interrupt(done, total):
        if done == 2:
            raise KeyboardInterrupt

    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        synthesize("aflw2000", fresh, 5, seed=0, progress=interrupt)
    assert not fresh.exists()
    with pytest.raises(KeyboardInterrupt):
        synthesize("aflw2000", out, 5, seed=1, force=True, progress=interrupt)
    assert json.loads((out / "SYNTHETIC.json").read_text())["n"] == 2  # the old tree is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no temporary folders left behind
    with pytest.raises(SynthError, match="unknown dataset"):
        synthesize("menpo", tmp_path / "x", 2)
    with pytest.raises(SynthError, match="at least 1"):
        synthesize("ls3dw", tmp_path / "x", 0)
    from dataclasses import replace

    m = load_synthetic_model()
    li = m.landmark_indices.copy()
    li[60:] = -1
    with pytest.raises(SynthError, match=r"no vertex for landmarks \[60, 61"):
        synthesize("ls3dw", tmp_path / "x", 2, model=replace(m, landmark_indices=li))
    with pytest.raises(SynthError, match="no triangles"):
        synthesize("ls3dw", tmp_path / "x", 2, model=replace(m, triangles=None))
    assert not (tmp_path / "x").exists()


def test_cli_synth(tmp_path):
    from click.testing import CliRunner

    from dhm_data.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["synth", "ls3dw", "--out", str(tmp_path / "ls"), "-n", "7", "--seed", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ls" / "SYNTHETIC.json").read_text())["counts"]["Menpo-3D"] == 1
    res = runner.invoke(main, ["synth", "ls3dw", "--out", str(tmp_path / "ls"), "-n", "7", "--quiet"])
    assert res.exit_code == 1 and "not empty" in res.output
    res = runner.invoke(main, ["synth", "lfpw", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2


def test_another_model_via_bfm_option(tmp_path):
    """A user model (here: the synthetic one truncated to 40/10 components,
    saved in the compact format) drives the writer; coefficients are
    zero-padded to the real 199 / 29 and the marker says it is not the
    packaged model."""
    from click.testing import CliRunner

    from dhm_data.cli import main
    from dhm_data.models.formats.compact import save_compact

    small = load_synthetic_model().truncated(40, 10)
    path = save_compact(small, tmp_path / "small.npz")
    res = CliRunner().invoke(main, ["synth", "aflw2000", "--out", str(tmp_path / "a"), "-n", "3", "--bfm", str(path), "--quiet"])
    assert res.exit_code == 0, res.output
    marker = json.loads((tmp_path / "a" / "SYNTHETIC.json").read_text())
    assert marker["model"] == "custom" and marker["model_name"] == small.name
    for f in sorted((tmp_path / "a" / "AFLW2000").glob("*.mat")):
        m = scipy.io.loadmat(f, mat_dtype=True)
        assert m["Shape_Para"].shape == (199, 1) and not m["Shape_Para"][40:].any()
        assert m["Exp_Para"].shape == (29, 1) and not m["Exp_Para"][10:].any()

"""300W-LP on real files (../shared/reference/300w-lp): every one of the 1,786
real IBUG landmark files, the frame of their ``pts_3d`` / ``pts_2d``, and a
build of the release-shaped tree."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.io as sio
from conftest import reference_path

from dhm_data.build.flow import BuildRequest, run_build
from dhm_data.datasets.labels import field
from dhm_data.formats.matfile import load_mat
from dhm_data.geometry import camera
from dhm_data.geometry.crop import apply_affine, invert_affine
from dhm_data.models.formats import load_model
from dhm_data.shards import read_columns

RELEASE = ("300w-lp", "300W_LP")


@pytest.fixture(scope="module")
def landmark_files():
    files = sorted(reference_path(*RELEASE, "landmarks", "IBUG").glob("*_pts.mat"))
    assert len(files) == 1_786
    return files


def test_every_real_ibug_landmark_file_reads(landmark_files):
    """All 1,786 files through the label path the reader uses (fast MAT v5
    reader + field check), identical to scipy, (68, 2) finite."""
    for f in landmark_files:
        mat = load_mat(f, ["pts_2d", "pts_3d"])
        ref = sio.loadmat(f, mat_dtype=True)
        for key in ("pts_2d", "pts_3d"):
            assert mat[key].dtype == ref[key].dtype == np.float32, f
            np.testing.assert_array_equal(mat[key], ref[key])
            a = field(mat, f, key, (68, 2))
            assert a.dtype == np.float64 and np.all(np.isfinite(a)), f


def test_pts_2d_is_pts_3d_with_the_visible_jaw(landmark_files):
    """Measured on all 1,786 files: the 51 inner points of ``pts_2d`` and
    ``pts_3d`` are identical to the bit (one frame, one annotation); only the
    17 jaw points differ -- ``pts_2d`` follows the visible contour -- and the
    further the face is turned (the step k), the more (median of the largest
    jaw difference per file: 27 px at k = 0, 58 px at k = 5, 92 px at
    k = 10)."""
    by_k = {}
    for f in landmark_files:
        m = load_mat(f, ["pts_2d", "pts_3d"])
        np.testing.assert_array_equal(m["pts_2d"][17:], m["pts_3d"][17:])
        k = int(re.search(r"_(\d+)_pts\.mat$", f.name).group(1))
        by_k.setdefault(k, []).append(np.linalg.norm(m["pts_2d"][:17] - m["pts_3d"][:17], axis=1).max())
    medians = {k: float(np.median(v)) for k, v in by_k.items()}
    assert 20 < medians[0] < 35 and 50 < medians[5] < 65 and 85 < medians[10] < 100
    assert medians[0] < medians[5] < medians[10]


def test_pts_3d_frame_is_one_based_like_pt3d_68():
    """The one sample with both its parameters and its landmarks file: the
    68-row BFM projection of its labels (y = h + 1 - y) lands on ``pts_3d``
    read as 1-based pixels with a mean error under 0.5 px and no mean offset;
    read as 0-based it would be a full pixel off in x and y."""
    base = reference_path(*RELEASE)
    mat = sio.loadmat(base / "IBUG" / "IBUG_image_008_1_0.mat")
    pts_3d = sio.loadmat(base / "landmarks" / "IBUG" / "IBUG_image_008_1_0_pts.mat")["pts_3d"].astype(np.float64)
    model = load_model(reference_path("bfm68"))
    shape = model.reconstruct(mat["Shape_Para"].ravel()[:model.n_identity], mat["Exp_Para"].ravel()[:model.n_expression])
    projected = camera.model_to_image(shape, mat["Pose_Para"].ravel().astype(np.float64), 450)[:, :2]  # 0-based
    as_one_based = camera.one_based_to_zero_based(pts_3d)
    err = np.linalg.norm(projected - as_one_based, axis=1)
    assert err.mean() < 0.5
    assert np.abs((projected - as_one_based).mean(axis=0)).max() < 0.2
    as_zero_based = np.linalg.norm(projected - pts_3d, axis=1)
    assert as_zero_based.mean() > 1.2


def test_release_shaped_tree_builds_and_maps_back(tmp_path):
    """The release-shaped tree (IBUG_image_008_1_0 with its landmarks file,
    two AFW originals without one) builds with the 68-row BFM: the IBUG
    sample takes ``pts_3d``, the AFW ones their ``pt2d`` (k = 0), and every
    crop's landmarks map back through ``crop_affine`` onto the label the build
    chose, within 0.01 px."""
    root = reference_path(*RELEASE)
    summary = run_build(BuildRequest("300wlp", root.parent, tmp_path / "out", reference_path("bfm68"), progress=False),
                        echo=lambda m: None)
    assert summary["rejected"] == 0 and sum(summary["written"].values()) == 3
    assert summary["label_sources"] == {"landmarks/pts_3d": 1, "pt2d": 2}
    checked = 0
    for split, n in summary["written"].items():
        if not n:
            continue
        cols = read_columns(tmp_path / "out" / split / "shard-00000.h5", ["name", "landmarks_2d", "crop_affine"])
        for name, lm, affine in zip(cols["name"], cols["landmarks_2d"], cols["crop_affine"]):
            subset, stem = str(name).split("/")
            if subset == "IBUG":
                label = sio.loadmat(root / "landmarks" / subset / f"{stem}_pts.mat")["pts_3d"].astype(np.float64)
            else:
                label = sio.loadmat(root / subset / f"{stem}.mat")["pt2d"].T.astype(np.float64)
            back = apply_affine(invert_affine(affine), lm.astype(np.float64))
            assert np.abs(back - camera.one_based_to_zero_based(label)).max() < 0.01, name
            checked += 1
    assert checked == 3


def test_unlabelled_rotations_have_their_landmarks_in_the_image():
    """The 61 real rotated images (k = 0 ... 13 of five photos) have a
    landmarks file each, whose ``pts_3d`` lies inside the 450 x 450 image;
    the faces turn away step by step: the jaw's width shrinks from k = 0 to
    the last step in every photo."""
    images = sorted(reference_path("300w-lp", "unlabelled-rotations", "IBUG").glob("*.jpg"))
    assert len(images) == 61
    lm_dir = reference_path(*RELEASE, "landmarks", "IBUG")
    widths = {}
    for img in images:
        pts = load_mat(lm_dir / f"{img.stem}_pts.mat", ["pts_3d"])["pts_3d"]
        assert pts.min() >= 1 and pts.max() <= 450, img.name
        source, k = img.stem.rsplit("_", 1)
        widths.setdefault(source, {})[int(k)] = float(np.ptp(pts[:17, 0]))
    assert len(widths) == 5
    for source, w in widths.items():
        assert w[max(w)] < w[0], source

"""Fitting the 2,000 real AFLW2000-3D labels (``pt3d_68``) with the real
bfm68 subset and the Surrey Face Model, against the dataset's ``Pose_Para``;
the figures of docs/fitting.md (benchmarks/fit_real.py prints them in full).
Skips with a reason where ../shared/reference is absent."""

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import reference_path

from dhm_data.fit import FitConfig, fit
from dhm_data.models.formats import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from fit_real import load_labels, pose_errors  # noqa: E402  (the benchmark's own measure)

H = 450


@pytest.fixture(scope="module")
def labels():
    return load_labels(reference_path("aflw2000-3d-gt"))


@pytest.fixture(scope="module")
def sfm():
    return load_model(reference_path("sfm"))


@pytest.fixture(scope="module")
def sfm_fits(labels, sfm):
    lm, _, _ = labels
    return {jaw: fit(lm, sfm, config=FitConfig(jaw=jaw), image_height=H) for jaw in ("fixed", "silhouette")}


def test_labels_are_the_2000_faces(labels):
    lm, l3, pose = labels
    assert lm.shape == (2000, 68, 2) and l3.shape == (2000, 68, 3) and pose.shape == (2000, 7)
    assert int((np.abs(np.degrees(pose[:, 1])) < 30).sum()) == 1312


def test_bfm68_fits_every_face_with_yaw_within_0_6_degrees(labels):
    lm, l3, pose = labels
    model = load_model(reference_path("bfm68"))
    r = fit(lm, model, image_height=H)
    yaw_e, _, _, geo = pose_errors(r.pose_para, pose)
    # measured: 0 flagged, median yaw error 0.47 deg, median rotation error 1.20 deg, median NME 0.36%
    assert int(r.flagged.sum()) == 0
    assert np.median(yaw_e) < 0.6
    assert np.median(geo) < 1.4
    assert np.median(r.residual) < 0.0045
    # with pt3d_68's z as the 3D estimate: median yaw error 0.22, rotation 0.83 deg
    r3 = fit(lm, model, l3, image_height=H)
    yaw3, _, _, geo3 = pose_errors(r3.pose_para, pose)
    assert int(r3.flagged.sum()) == 0 and np.median(yaw3) < 0.3 and np.median(geo3) < 1.0


def test_surrey_default_jaw_is_fixed_and_flags_under_1_percent(labels, sfm_fits):
    _, _, pose = labels
    assert FitConfig().jaw == "fixed"  # pt3d_68 are projections of fixed 3D landmarks
    r = sfm_fits["fixed"]
    yaw_e, _, _, geo = pose_errors(r.pose_para, pose)
    # measured: 0 of 2000 flagged; median yaw error 2.2 deg, rotation 4.6 deg (another model than the labels')
    assert r.flagged.mean() < 0.01
    assert np.median(yaw_e) < 2.6 and np.median(geo) < 5.0


def test_surrey_silhouette_fits_near_frontal_faces_as_well_as_the_fixed_jaw(labels, sfm_fits):
    """The fault this pins: the first pose used the 16 jaw landmarks on the
    first vertex of the shared contour list (the temple), tilting the face
    by ~30-50 degrees of pitch; 669 of 1,312 near-frontal faces were
    flagged.  Now the first pose comes from the fixed-vertex landmarks."""
    lm, _, pose = labels
    near = np.abs(np.degrees(pose[:, 1])) < 30
    sil, fixed = sfm_fits["silhouette"], sfm_fits["fixed"]
    # measured: 0 of 1312 flagged (was 669); median NME 1.4% vs 1.2% with the fixed jaw (16 more points)
    assert sil.flagged[near].mean() < 0.02
    yaw_s, _, _, geo_s = pose_errors(sil.pose_para[near], pose[near])
    yaw_f, _, _, geo_f = pose_errors(fixed.pose_para[near], pose[near])
    assert np.median(geo_s) < 1.1 * np.median(geo_f)
    assert np.median(yaw_s) < 1.1 * np.median(yaw_f)
    # the jaw landmarks were marched onto contour vertices
    assert (sil.landmark_vertices[near][:, :8] >= 0).all()


def test_landmark_sub_model_with_contour_fits_like_the_full_model(labels, sfm):
    lm, _, _ = labels
    sub = sfm.landmark_model(contour=True)
    assert sub.n_vertices == 68 + len(np.unique(np.concatenate(sfm.contour_candidates)))
    cfg = FitConfig(jaw="silhouette")
    full = fit(lm[:200], sfm, config=cfg, image_height=H)
    small = fit(lm[:200], sub, config=cfg, image_height=H)
    np.testing.assert_allclose(small.pose_para, full.pose_para, atol=1e-9)
    np.testing.assert_allclose(small.shape_para, full.shape_para, atol=1e-9)
    # the plain sub-model has no contour lines: silhouette there is the fixed-jaw fallback
    assert sfm.landmark_model().contour_candidates is None

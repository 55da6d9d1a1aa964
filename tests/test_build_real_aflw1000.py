"""Every one of the 1,000 real AFLW2000-3D images of ../shared/reference builds,
and each sample's geometry is right (issue 12, item 1); the model and labels
must belong together (item 2)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import reference_path

from dhm_data.build.flow import BuildRequest, run_build
from dhm_data.cli import main
from dhm_data.geometry import camera
from dhm_data.geometry.crop import apply_affine, invert_affine
from dhm_data.prepare.dhm import render_dhm
from dhm_data.shards import read_columns


@pytest.fixture(scope="module")
def aflw1000_build(tmp_path_factory):
    root = reference_path("aflw2000-3d-1000")
    bfm = reference_path("bfm68")
    out = tmp_path_factory.mktemp("aflw1000") / "build"
    summary = run_build(BuildRequest("aflw2000", root, out, bfm, jobs=2, progress=False), echo=lambda m: None)
    return root, out, summary


def test_all_1000_real_images_build_with_the_23_point_pt2d_as_warnings(aflw1000_build):
    _, out, s = aflw1000_build
    assert s["written"] == {"test": 1000} and s["rejected"] == 0
    # image01198 and image02899 (image03189 is not among the 1,000) hold a (2, 23) pt2d the build never uses
    assert sorted(w["name"] for w in s["warnings"]) == ["image01198", "image02899"]
    assert all("'pt2d' has shape (2, 23), expected (2, 21)" in w["warning"] for w in s["warnings"])
    assert json.loads((out / "build.json").read_text())["warnings"] == s["warnings"]
    # the label check ran on every sample; the worst measured with bfm68 is 0.026
    assert s["label_check"]["checked"] == 1000 and s["label_check"]["max_error"] < 0.03


def test_each_real_sample_maps_back_onto_pt3d_68_with_its_dhm_and_yaw(aflw1000_build):
    root, out, _ = aflw1000_build
    gt_names = reference_path("aflw2000-3d-predictions", "AFLW2000-3D_crop.list").read_text().split()
    gt = np.load(reference_path("aflw2000-3d-gt", "AFLW2000-3D.pts68.npy"))       # (2000, 3, 68), 1-based
    pose = np.load(reference_path("aflw2000-3d-gt", "AFLW2000-3D.pose_para.npy"))  # (2000, 7)
    row = {n.removesuffix(".jpg"): i for i, n in enumerate(gt_names)}
    n = 0
    for shard in sorted((out / "test").glob("shard-*.h5")):
        c = read_columns(shard)
        for k, name in enumerate(c["name"]):
            i = row[str(name)]
            pt3d = gt[i].T - np.array([1.0, 1.0, 0.0])                      # 0-based x, y
            back = apply_affine(invert_affine(c["crop_affine"][k]), c["landmarks_2d"][k].astype(np.float64))
            assert np.abs(back - pt3d[:, :2]).max() < 2e-3, name          # float32 storage of crop pixels
            back3 = apply_affine(invert_affine(c["crop_affine"][k]), c["landmarks_3d"][k].astype(np.float64))
            assert np.abs(back3[:, :2] - pt3d[:, :2]).max() < 2e-3, name
            dhm = render_dhm(c["landmarks_3d"][k], c["dhm"].shape[1], 1.0)
            assert np.abs(dhm - c["dhm"][k]).max() <= 0.5 / 255 + 1e-6, name  # the DHM at the landmarks
            assert np.allclose(c["pose_para"][k], pose[i], atol=1e-6), name
            assert c["yaw"][k] == pytest.approx(float(camera.yaw_degrees(pose[i].astype(np.float64))), abs=1e-3)
            n += 1
    assert n == 1000


def test_a_model_of_another_family_is_refused_before_any_work(tmp_path):
    root = reference_path("aflw2000-3d-samples")
    sfm = reference_path("sfm")
    out = tmp_path / "b"
    r = CliRunner().invoke(main, ["build", "aflw2000", "--root", str(root), "--bfm", str(sfm), "--out", str(out)])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "coefficients of the Basel Face Model 2009" in r.output and "family 'surrey'" in r.output
    assert not out.exists()                                                 # nothing written


def test_show_mesh_refuses_a_model_the_parameters_do_not_belong_to(aflw1000_build, tmp_path):
    _, out, _ = aflw1000_build
    r = CliRunner().invoke(main, ["show", str(out), "-o", str(tmp_path / "s.png"), "--mesh", str(tmp_path / "m.obj"),
                                  "--bfm", str(reference_path("sfm"))])
    assert r.exit_code != 0 and "Basel Face Model 2009" in r.output and "family 'surrey'" in r.output
    assert not (tmp_path / "m.obj").exists()

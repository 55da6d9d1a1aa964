"""One short test per dataset reader on synthetic data in the raw layout, plus
the bad-input cases every reader must name clearly."""

import dataclasses
import shutil

import numpy as np
import pytest
import scipy.io as sio

from dhm_data.datasets import get_reader
from dhm_data.errors import DatasetError


def _truth(root):
    z = np.load(root / "synthetic_truth.npz")
    return {str(n): z["landmarks_3d"][i] for i, n in enumerate(z["names"])}


def test_300wlp_reader(synthetic_tree):
    root = synthetic_tree("300wlp", 20)
    reader = get_reader("300wlp")(root)
    items = reader.items()
    assert len(items) == 40 and sum(it.flipped for it in items) == 20
    truth = _truth(root)
    for s in map(reader.load, items[:6]):
        assert s.landmark_source.startswith("landmarks/pts_3d") and s.shape_para.shape == (199,)
        if not s.flipped:
            np.testing.assert_allclose(s.landmarks_2d, truth[s.name][:, :2], atol=1e-3)


def test_300wlp_flip_labels_are_mirrored_and_reordered(synthetic_tree):
    from dhm_data.geometry.landmarks68 import MIRROR_68

    root = synthetic_tree("300wlp", 20)
    reader = get_reader("300wlp")(root)
    items = {it.name: it for it in reader.items()}
    orig = reader.load(items["AFW/AFW_1000000_1_1"])
    flip = reader.load(items["AFW_Flip/AFW_1000000_1_1"])
    w = orig.image_size[1]
    np.testing.assert_allclose(flip.landmarks_2d[:, 0], (w - 1 - orig.landmarks_2d[:, 0])[MIRROR_68], atol=1e-9)
    np.testing.assert_allclose(flip.landmarks_2d[:, 1], orig.landmarks_2d[MIRROR_68, 1], atol=1e-9)
    assert flip.extra["yaw_deg"] == pytest.approx(-orig.extra["yaw_deg"])
    assert flip.source_id == orig.source_id


def test_aflw2000_reader(synthetic_tree):
    root = synthetic_tree("aflw2000", 8)
    reader = get_reader("aflw2000")(root)
    items = reader.items()
    assert [it.name for it in items] == sorted(it.name for it in items) and len(items) == 8
    s = reader.load(items[0])
    m = sio.loadmat(items[0].paths[1])
    np.testing.assert_allclose(s.landmarks_3d, np.c_[m["pt3d_68"][:2].T - 1, m["pt3d_68"][2]], atol=1e-5)
    assert s.extra["pt2d_21"].shape == (2, 21)


def test_ls3dw_reader(synthetic_tree):
    root = synthetic_tree("ls3dw", 30)
    reader = get_reader("ls3dw")(root)
    items = reader.items()
    assert len(items) == 30 and {it.subset for it in items} >= {"Menpo-3D", "300VW-3D/CatA"}
    truth = _truth(root)
    for s in map(reader.load, items):
        np.testing.assert_allclose(s.landmarks_2d, truth[s.name][:, :2], atol=1e-3)
        assert s.pose_para is None
    only = get_reader("ls3dw")(root, subsets=["Menpo-3D"]).items()
    assert {it.subset for it in only} == {"Menpo-3D"}


def test_root_may_be_the_parent_and_a_wrong_root_says_what_was_expected(tmp_path, synthetic_tree):
    root = synthetic_tree("aflw2000", 8)
    assert get_reader("aflw2000")(root / "AFLW2000").root == get_reader("aflw2000")(root).root
    with pytest.raises(DatasetError, match=r"no such directory.*AFLW2000"):
        get_reader("aflw2000")(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"does not look like 300W_LP.*AFW.*synth 300wlp"):
        get_reader("300wlp")(tmp_path / "empty")


@pytest.fixture
def aflw_copy(tmp_path, synthetic_tree):
    shutil.copytree(synthetic_tree("aflw2000", 8), tmp_path / "tree")  # with its SYNTHETIC.json
    return tmp_path / "tree" / "AFLW2000"


def test_bad_mat_files_name_the_file_and_the_key(aflw_copy):
    reader = get_reader("aflw2000")(aflw_copy)
    items = reader.items()
    # missing key
    m = sio.loadmat(items[0].paths[1])
    del m["pt3d_68"]
    sio.savemat(items[0].paths[1], {k: v for k, v in m.items() if not k.startswith("__")})
    with pytest.raises(DatasetError, match=r"image\d+\.mat: key 'pt3d_68' is missing"):
        reader.load(items[0])
    # wrong shape
    m = sio.loadmat(items[1].paths[1])
    m["Pose_Para"] = np.zeros((1, 6), np.float32)
    sio.savemat(items[1].paths[1], {k: v for k, v in m.items() if not k.startswith("__")})
    with pytest.raises(DatasetError, match=r"'Pose_Para' has shape \(1, 6\), expected \(1, 7\)"):
        reader.load(items[1])
    # NaN
    m = sio.loadmat(items[2].paths[1])
    m["pt3d_68"][0, 5] = np.nan
    sio.savemat(items[2].paths[1], {k: v for k, v in m.items() if not k.startswith("__")})
    with pytest.raises(DatasetError, match=r"'pt3d_68' holds 1 NaN/inf"):
        reader.load(items[2])
    # not a .mat at all / truncated
    items[3].paths[1].write_bytes(b"MATLAB 5.0 truncated")
    with pytest.raises(DatasetError, match=r"cannot read as a MATLAB v5 .mat file"):
        reader.load(items[3])
    # v7.3 (HDF5) file
    import h5py

    items[4].paths[1].unlink()
    with h5py.File(items[4].paths[1], "w", userblock_size=512) as f:
        f["pt3d_68"] = np.zeros((68, 3))
    with open(items[4].paths[1], "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\0" * 8 + b"\x00\x02IM")
    with pytest.raises(DatasetError, match=r"v7.3|cannot read"):
        reader.load(items[4])
    # missing image
    items[5].paths[0].unlink()
    with pytest.raises(DatasetError, match=r"image\d+\.jpg: image file is missing"):
        reader.load(items[5])


def test_build_rejects_bad_samples_lists_them_and_strict_fails(aflw_copy, tmp_path):
    from dhm_data.build.flow import BuildRequest, run_build
    from dhm_data.errors import BuildError

    items = get_reader("aflw2000")(aflw_copy).items()
    items[0].paths[0].write_bytes(b"not a jpeg at all")          # undecodable image
    m = sio.loadmat(items[1].paths[1])
    m["pt3d_68"][:2] = 100.0                                       # zero-size box
    sio.savemat(items[1].paths[1], {k: v for k, v in m.items() if not k.startswith("__")})
    req = BuildRequest("aflw2000", aflw_copy, tmp_path / "out", None, progress=False)
    s = run_build(req, echo=lambda m: None)
    assert s["written"] == {"test": 6} and s["rejected"] == 2
    lines = (tmp_path / "out" / "rejections.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert items[0].name in lines[0] and "image" in lines[0]
    assert items[1].name in lines[1] and "zero width" in lines[1]
    req = dataclasses.replace(req, strict=True, out=tmp_path / "out2")  # requests are frozen
    with pytest.raises(BuildError, match="--strict: 2 samples were rejected"):
        run_build(req, echo=lambda m: None)


def test_bad_t7_is_rejected_with_its_path(tmp_path, synthetic_tree):
    src = synthetic_tree("ls3dw", 30) / "LS3D-W"
    dst = tmp_path / "LS3D-W"
    shutil.copytree(src, dst)
    reader = get_reader("ls3dw")(dst)
    items = reader.items()
    items[0].paths[1].write_bytes(b"\x04\x00\x00\x00garbage")
    with pytest.raises(DatasetError, match=r"\.t7"):
        reader.load(items[0])
    items[1].paths[1].unlink()
    with pytest.raises(DatasetError, match=r"\.t7: label file is missing"):
        reader.load(items[1])


def test_a_shard_whose_samples_are_all_rejected_reads_as_zero_rows(tmp_path, synthetic_tree):
    from dhm_data.build.flow import BuildRequest, run_build
    from dhm_data.shards import read_columns

    shutil.copytree(synthetic_tree("aflw2000", 8), tmp_path / "tree")
    items = get_reader("aflw2000")(tmp_path / "tree").items()
    for it in items[:2]:
        it.paths[0].write_bytes(b"")                 # the first shard (size 2) loses both samples
    s = run_build(BuildRequest("aflw2000", tmp_path / "tree", tmp_path / "out", None, progress=False,
                               overrides={"shards.size": 2}), echo=lambda m: None)
    assert s["written"] == {"test": 6} and s["rejected"] == 2
    cols = read_columns(tmp_path / "out" / "test" / "shard-00000.h5")
    assert cols["image"].shape == (0, 224, 224, 3) and cols["name"].shape == (0,)


def test_flip_samples_carry_their_own_labels(synthetic_tree, tmp_path):
    from dhm_data.build.flow import BuildRequest, run_build
    from dhm_data.geometry import camera
    from dhm_data.shards import read_columns

    root = synthetic_tree("300wlp", 20)
    run_build(BuildRequest("300wlp", root, tmp_path / "b", None, progress=False), echo=lambda m: None)
    for shard in sorted((tmp_path / "b").glob("*/shard-*.h5")):
        c = read_columns(shard, ["flipped", "pose_para", "yaw", "name"])
        np.testing.assert_allclose(c["yaw"], camera.yaw_degrees(c["pose_para"].astype(np.float64)), atol=1e-3)
        assert c["flipped"].any() or not any("Flip" in n for n in c["name"])


def test_aflw2000_reannotated_labels_from_t7(aflw_copy):
    from dhm_data.formats.t7 import write_t7

    reader = get_reader("aflw2000")(aflw_copy)
    items = reader.items()
    re_dir = aflw_copy.parent / "LS3D-W" / "AFLW2000-3D-Reannotated"
    re_dir.mkdir(parents=True)
    for it in items:
        s = reader.load(it)
        write_t7(re_dir / f"{it.name}.t7", (s.landmarks_2d + 0.5).astype(np.float32))
    (re_dir / f"{items[1].name}.t7").write_bytes(b"\x04\x00\x00\x00garbage")
    re_reader = get_reader("aflw2000")(aflw_copy, annotation="reannotated")
    re_items = re_reader.items()
    s = re_reader.load(re_items[0])
    np.testing.assert_allclose(s.landmarks_2d, reader.load(items[0]).landmarks_2d + 0.5, atol=1e-4)
    assert s.landmark_source == "LS3D-W re-annotation (t7)"
    with pytest.raises(DatasetError, match=r"\.t7: cannot read as a Torch7 tensor"):
        re_reader.load(re_items[1])

"""The real BFM 2009 side files (../shared/reference/bfm-aux): the trim list,
the 1-based keypoints and triangles read by the BFM 2009 loader, the real
mean face as a mesh, and the index space of the face-contour vertex lines.

The Basel download itself (``01_MorphableModel.mat``) cannot be had here, so
the loader is given a stand-in with the real vertex count (53,490) whose
trimmed vertices carry the real trimmed mean (``Model_Shape_Sim.mu_shape``)
and two dummy components, next to the *real* ``model_info.mat``; everything
the loader takes from ``model_info.mat`` is then real."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import scipy.io as sio
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from conftest import reference_path

from dhm_data.models.formats import load_model
from dhm_data.viz.mesh import export_mesh

FULL, TRIMMED = 53_490, 53_215


def _vertex_graph(faces, n):
    """Sparse (n, n) adjacency of the mesh's vertices (an entry per edge)."""
    f = np.asarray(faces, np.int64)
    i = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    j = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    g = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)).tocsr()
    return g + g.T


@pytest.fixture(scope="module")
def aux():
    d = reference_path("bfm-aux")
    info = sio.loadmat(d / "model_info.mat")
    shape = sio.loadmat(d / "Model_Shape_Sim.mat")
    return {
        "dir": d,
        "trim": info["trimIndex"].ravel().astype(np.int64),            # 1-based into the 53,490 vertices
        "keypoints": info["keypoints"].ravel().astype(np.int64),     # 1-based into the trimmed vertices
        "tri": info["tri"].astype(np.int64),                          # (3, T) 1-based
        "mu_shape": shape["mu_shape"].astype(np.float64).reshape(-1, 3),
        "u_exp": np.load(d / "u_exp.npy").astype(np.float64).reshape(-1, 3),
        "contours": sio.loadmat(d / "Model_face_contour_trimed.mat"),
        "fullmod": sio.loadmat(d / "Model_fullmod_contour.mat"),
    }


@pytest.fixture(scope="module")
def real_trim_model(aux, tmp_path_factory):
    """A BFM 2009 folder: the real model_info.mat, a stand-in
    01_MorphableModel.mat (real trimmed mean, 2 components) and a
    Model_Expression.mat whose mean is the real expression mean."""
    folder = tmp_path_factory.mktemp("bfm2009")
    shutil.copy(aux["dir"] / "model_info.mat", folder / "model_info.mat")  # a copy in tmp, never committed
    rng = np.random.default_rng(0)
    mu_full = rng.normal(0, 1e4, (FULL, 3))          # untrimmed vertices: anything
    mu_full[aux["trim"] - 1] = aux["mu_shape"]       # the trim list puts the real mean in place
    pc = rng.normal(0, 1e-3, (3 * FULL, 2))
    sio.savemat(folder / "01_MorphableModel.mat", {"shapeMU": mu_full.reshape(-1, 1), "shapePC": pc,
                                                   "shapeEV": np.array([[2e5], [1e5]])})
    sio.savemat(folder / "Model_Expression.mat", {"mu_exp": aux["u_exp"].reshape(-1, 1),
                                                  "w_exp": rng.normal(0, 1e-3, (3 * TRIMMED, 2)),
                                                  "sigma_exp": np.array([[1.0], [1.0]])})
    return load_model(folder)


def test_side_file_shapes(aux):
    assert aux["trim"].shape == (TRIMMED,) and aux["trim"].min() == 1 and aux["trim"].max() == FULL
    assert len(np.unique(aux["trim"])) == TRIMMED
    assert aux["tri"].shape == (3, 105_840) and aux["tri"].min() == 1 and aux["tri"].max() == TRIMMED
    assert aux["keypoints"].shape == (68,) and 1 <= aux["keypoints"].min() and aux["keypoints"].max() <= TRIMMED
    assert aux["mu_shape"].shape == aux["u_exp"].shape == (TRIMMED, 3)


def test_loader_takes_trim_list_keypoints_and_triangles_from_the_real_model_info(aux, real_trim_model):
    m = real_trim_model
    assert m.n_vertices == TRIMMED
    np.testing.assert_array_equal(m.landmark_indices, aux["keypoints"] - 1)       # 1-based -> 0-based
    np.testing.assert_array_equal(m.triangles, aux["tri"].T - 1)
    np.testing.assert_allclose(m.mean, aux["mu_shape"] + aux["u_exp"], rtol=0, atol=1e-6)


def test_real_mean_at_the_keypoints_is_the_68_row_subset(real_trim_model):
    """The fact the 68-row BFM subset rests on: its mean (u_base.txt) is the
    trimmed identity mean plus the expression mean at the 1-based keypoints.
    Through the loader this checks the trim list, the keypoint base and the
    expression mean together."""
    bfm68 = load_model(reference_path("bfm68"))
    lm = real_trim_model.mean[real_trim_model.landmark_indices]
    np.testing.assert_allclose(lm, bfm68.mean, rtol=0, atol=0.05)  # float32 files, micrometres
    # one vertex off (the 0-based reading of the 1-based keypoints) is ~1 mm away
    off = real_trim_model.mean[real_trim_model.landmark_indices + 1]
    assert np.median(np.linalg.norm(off - bfm68.mean, axis=1)) > 500


def test_real_mean_face_mesh(real_trim_model, tmp_path):
    """The real mean face (identity mean + expression mean, real triangles)
    exported by the code behind ``show --mesh`` and opened with trimesh: one
    connected surface, not watertight (the face is an open sheet: its border
    is the forehead / cheek / chin cut of the trimmed BFM), consistently
    wound -- and wound clockwise as seen from the viewer: the normals of the
    file's triangles point into the head (measured: 19% of the faces' normals
    have +z, 81% once the winding is reversed).  The export keeps the file's
    winding."""
    import trimesh

    path = export_mesh(real_trim_model, None, None, tmp_path / "mean.ply")
    mesh = trimesh.load(path, process=False)
    assert mesh.vertices.shape == (TRIMMED, 3) and mesh.faces.shape == (105_840, 3)
    np.testing.assert_allclose(mesh.vertices, real_trim_model.mean, rtol=0, atol=0.01)
    assert not mesh.is_watertight
    assert mesh.is_winding_consistent
    n_parts, _ = connected_components(_vertex_graph(mesh.faces, len(mesh.vertices)), directed=False)
    assert n_parts == 1
    nose = real_trim_model.mean[real_trim_model.landmark_indices[30]]
    centre = real_trim_model.mean.mean(axis=0)
    assert nose[2] > centre[2]                                         # the nose points along +z
    towards_viewer = np.mean(mesh.face_normals[:, 2] > 0)
    assert 0.15 < towards_viewer < 0.25                                  # inward normals: clockwise winding
    # about 180 x 190 mm wide (micrometres): a face, not a garbled index space
    extent = np.ptp(mesh.vertices, axis=0)
    assert 150_000 < extent[0] < 200_000 and 150_000 < extent[1] < 230_000


def test_face_contour_index_space(aux):
    """``Model_face_contour_trimed.mat``: 1-based indices into the trimmed
    vertices, the same space as model_info's keypoints (its first 17 points
    *are* the 17 jaw keypoints), the next 11 closing the outline over the
    forehead; every one lies on the outline of the real mean face."""
    c = aux["contours"]["face_contour"].ravel().astype(np.int64)
    assert c.shape == (28,) and c.max() <= TRIMMED
    np.testing.assert_array_equal(c[:17], aux["keypoints"][:17])
    line = aux["contours"]["face_contour_line"].ravel().astype(np.int64)
    assert line.shape == (512,) and line.min() >= 1 and line.max() <= TRIMMED
    # a path along mesh edges of the trimmed (1-based) mesh, from the first jaw keypoint on
    assert line[0] == aux["keypoints"][0]
    edges = _vertex_graph(aux["tri"].T - 1, TRIMMED)
    steps = [(a - 1, b - 1) for a, b in zip(line[:-1], line[1:]) if a != b]
    assert np.mean([edges[a, b] != 0 for a, b in steps]) > 0.95
    mean = aux["mu_shape"] + aux["u_exp"]
    # on the outline: at its height, few vertices lie further out on its side
    for v in mean[c - 1][:13]:
        band = np.abs(mean[:, 1] - v[1]) < 2000
        side = 1.0 if v[0] > 0 else -1.0
        assert np.mean(side * mean[band, 0] > side * v[0]) < 0.51


def test_fullmod_contour_index_space(aux):
    """``Model_fullmod_contour.mat`` (face_pose_augmentation): 1-based
    indices (its loader subtracts 1) into the *completed* mesh -- the 53,215
    trimmed vertices followed by added ones (indices up to 63,478) -- so only
    its first 17 entries and the first 17 parallel lines are usable with the
    trimmed BFM: the 17 jaw keypoints and, for each, a line of 1-based
    trimmed vertices across the cheek (the landmark-marching candidates)
    passing within 2 mm of its keypoint."""
    kf = aux["fullmod"]["keypointsfull_contour"].ravel().astype(np.int64)
    assert kf.shape == (30,) and kf.max() == 63_478 > FULL
    np.testing.assert_array_equal(kf[:17], aux["keypoints"][:17])
    lines = [np.asarray(cell[0]).ravel().astype(np.int64) for cell in aux["fullmod"]["parallelfull_contour"]]
    assert len(lines) == 30
    mean = aux["mu_shape"] + aux["u_exp"]
    for i, line in enumerate(lines[:17]):
        assert line.min() >= 1 and line.max() <= TRIMMED, i
        gap = np.linalg.norm(mean[line - 1] - mean[aux["keypoints"][i] - 1], axis=1).min()
        assert gap < 2000, (i, gap)  # micrometres
    assert max(line.max() for line in lines[17:]) > TRIMMED  # the rest need the completed mesh


def test_marching_on_the_real_contour_lines(aux):
    """The jaw rule (:func:`dhm_data.geometry.contour.march_jaw`) on the real
    mean face with the 17 real parallel lines (1-based indices, read as
    their loader reads them): facing the camera the marched vertices stay
    near the fixed jaw keypoints (median 1.6 mm, at most ~10 mm on the
    cheeks); turned by 60 degrees the side turning away marches towards the
    ear (up to ~100 mm) while the near side and the chin stay within 2 mm;
    the mirror pose mirrors it."""
    from dhm_data.geometry import camera
    from dhm_data.geometry.contour import march_jaw

    mean = aux["mu_shape"] + aux["u_exp"]
    keypoints = aux["keypoints"][:17] - 1
    lines = [np.asarray(cell[0]).ravel().astype(np.int64) - 1 for cell in aux["fullmod"]["parallelfull_contour"][:17]]

    def marched_offsets(yaw_deg):
        R = camera.rotation_from_angles(0.0, np.radians(yaw_deg), 0.0)
        k = march_jaw([(mean[line] @ R.T)[None, :, :2] for line in lines])[0]
        chosen = np.array([line[k[j]] for j, line in enumerate(lines)])
        return np.linalg.norm(mean[chosen] - mean[keypoints], axis=1) / 1000  # mm

    front = marched_offsets(0)
    assert np.median(front) < 2.0 and front.max() < 11.0 and front[8] == 0
    right, left = marched_offsets(60), marched_offsets(-60)
    assert right[:8].min() > 10 and right[:8].max() > 90 and right[8:].max() < 2.0
    assert left[9:].min() > 10 and left[9:].max() > 90 and left[:9].max() < 2.0

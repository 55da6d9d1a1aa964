"""Model loaders: every format on files in exactly its layout.

Formats we cannot ship (BFM 2009 + 3DDFA files, face3d's BFM.mat, 3DDFA_V2's
pickle: the BFM licence forbids redistribution) are written here as small
synthetic files with the same keys, dtypes, nesting and index bases, and the
loaded landmarks are checked against a hand computation done in MATLAB's
1-based interleaved-row arithmetic.  The real files under ../shared/reference
(the 68-row BFM subset, the Surrey Face Model) are read for real, and the SFM
is compared side by side with eos's own loader when eos-py is installed.
"""

from __future__ import annotations

import os
import pickle
import re
import struct

import numpy as np
import pytest
import scipy.io

from dhm_data.errors import ModelFileError
from dhm_data.models.formats import bfm2009, compact, detect_format, load_model, surrey
from dhm_data.models.formats.compact import FORMAT_MARKER, save_compact
from dhm_data.models.morphable import MorphableModel

N_LM = 68


# ====================================================== synthetic writers
def write_bfm2009(folder, *, n_full, trim, K=4, E=3, seed=0, parallel=True, drop=None, override=None):
    """01_MorphableModel.mat + model_info.mat + Model_Expression.mat [+ Modelplus_parallel.mat]
    in 3DDFA's layout.  ``trim`` is the 1-based trim list (a parameter: the
    real one has 53,215 entries); returns the raw arrays written."""
    rng = np.random.default_rng(seed)
    trim = np.asarray(trim, np.float64).reshape(-1, 1)
    Vt = trim.shape[0]
    raw = {
        "shapeMU": rng.normal(0, 5e4, (3 * n_full, 1)).astype(np.float32),
        "shapePC": rng.normal(0, 1e-2, (3 * n_full, K)).astype(np.float32),
        "shapeEV": np.sort(rng.uniform(1e4, 1e6, (K, 1)))[::-1].astype(np.float32),
        "trimIndex": trim,
        "keypoints": rng.choice(np.arange(1, Vt + 1), N_LM, replace=Vt < N_LM).astype(np.float64).reshape(1, N_LM),
        "tri": rng.integers(1, Vt + 1, (3, 2 * Vt)).astype(np.float64),
        "mu_exp": rng.normal(0, 1e3, (3 * Vt, 1)).astype(np.float32),
        "w_exp": rng.normal(0, 1e3, (3 * Vt, E)).astype(np.float32),
        "sigma_exp": rng.uniform(0.5, 2.0, (E, 1)).astype(np.float32),
    }
    raw.update(override or {})
    files = {
        bfm2009.MORPHABLE_MODEL: ("shapeMU", "shapePC", "shapeEV"),
        bfm2009.MODEL_INFO: ("trimIndex", "keypoints", "tri"),
        bfm2009.EXPRESSION: ("mu_exp", "w_exp", "sigma_exp"),
    }
    for name, keys in files.items():
        scipy.io.savemat(folder / name, {k: raw[k] for k in keys if k != drop})
    if parallel:
        cells = np.empty((1, 17), dtype=object)
        lines = [rng.choice(np.arange(1, Vt + 1), 5).astype(np.float64).reshape(1, -1) for _ in range(17)]
        for i, ln in enumerate(lines):
            cells[0, i] = ln
        scipy.io.savemat(folder / bfm2009.PARALLEL, {"parallel": cells})
        raw["parallel"] = lines
    return raw


def expected_landmarks_bfm2009(raw, a, b):
    """Hand computation, MATLAB style: landmark j is trimmed vertex t =
    keypoints(j), full vertex f = trimIndex(t); its rows are 3f-2..3f of the
    BFM arrays and 3t-2..3t of the expression arrays (1-based)."""
    out = np.zeros((N_LM, 3))
    for j in range(N_LM):
        t = int(raw["keypoints"][0, j])
        f = int(raw["trimIndex"][t - 1, 0])
        rf = slice(3 * f - 3, 3 * f)  # MATLAB rows 3f-2 : 3f
        rt = slice(3 * t - 3, 3 * t)
        for c in range(3):
            s = float(raw["shapeMU"][rf][c, 0]) + float(raw["mu_exp"][rt][c, 0])
            s += sum(float(raw["shapePC"][rf][c, k]) * a[k] for k in range(len(a)))
            s += sum(float(raw["w_exp"][rt][c, e]) * b[e] for e in range(len(b)))
            out[j, c] = s
    return out


def write_face3d(path, *, V=50, K=4, E=3, seed=1, drop=None, override=None, info=True):
    """face3d's Out/BFM.mat: one struct 'model' (generate.py: savemat({'model': Model}))."""
    rng = np.random.default_rng(seed)
    model = {
        "shapeMU": rng.normal(0, 5e4, (3 * V, 1)),
        "shapePC": rng.normal(0, 1e-2, (3 * V, K)).astype(np.float32),
        "shapeEV": rng.uniform(1e4, 1e6, (K, 1)),
        "texMU": rng.uniform(0, 255, (3 * V, 1)),
        "texPC": rng.normal(0, 1, (3 * V, K)),
        "texEV": rng.uniform(1, 10, (K, 1)),
        "tri": rng.integers(1, V + 1, (3, 2 * V)).astype(np.float64),
        "kpt_ind": rng.choice(np.arange(1, V + 1), N_LM).astype(np.float64).reshape(1, N_LM),
        "expMU": rng.normal(0, 1e3, (3 * V, 1)),
        "expPC": rng.normal(0, 1e3, (3 * V, E)),
        "expEV": rng.uniform(0.5, 2.0, (E, 1)),
        "tri_mouth": rng.integers(1, V + 1, (3, 7)).astype(np.float64),
    }
    model.update(override or {})
    if drop:
        model.pop(drop)
    scipy.io.savemat(path, {"model": model})
    if info:
        cells = np.empty((1, 17), dtype=object)
        for i in range(17):
            cells[0, i] = rng.choice(np.arange(1, V + 1), 4).astype(np.float64).reshape(1, -1)
        scipy.io.savemat(path.parent / "BFM_info.mat", {"model_info": {"parallel": cells, "trimIndex": np.arange(1, V + 1)}})
        model["parallel"] = cells
    return model


def write_tddfa(path, *, V=60, K=40, E=10, seed=2, drop=None, override=None, tri_file=False):
    rng = np.random.default_rng(seed)
    vert = rng.choice(V, N_LM)
    d = {
        "u": rng.normal(0, 5e4, (3 * V, 1)).astype(np.float32),
        "w_shp": rng.normal(0, 1e-2, (3 * V, K)).astype(np.float32),
        "w_exp": rng.normal(0, 1e3, (3 * V, E)).astype(np.float32),
        "keypoints": np.stack([3 * vert, 3 * vert + 1, 3 * vert + 2], 1).reshape(-1).astype(np.int64),
        "tri": rng.integers(0, V, (3, 2 * V)).astype(np.int32),
    }
    d.update(override or {})
    if drop:
        d.pop(drop)
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)
    if tri_file:
        tri = rng.integers(0, V, (3, V)).astype(np.int32)
        with open(path.parent / "tri.pkl", "wb") as f:
            pickle.dump(tri, f)
        d["tri_file"] = tri
    return d


class CerealWriter:
    """Independent writer of eos's cereal binary layout (for files eos is not needed to make)."""

    def __init__(self):
        self.b = bytearray()

    def u32(self, v):
        self.b += struct.pack("<I", v)

    def i32(self, v):
        self.b += struct.pack("<i", v)

    def u64(self, v):
        self.b += struct.pack("<Q", v)

    def flag(self, v):
        self.b += bytes([1 if v else 0])

    def string(self, s):
        e = s.encode()
        self.u64(len(e))
        self.b += e

    def matrix(self, a):
        a = np.asarray(a, np.float32)
        a = a.reshape(-1, 1) if a.ndim == 1 else a
        self.i32(a.shape[0])
        self.i32(a.shape[1])
        self.b += a.T.astype("<f4").tobytes()  # column-major

    def triples(self, t):
        t = np.asarray(t, np.int32).reshape(-1, 3)
        self.u64(len(t))
        self.b += t.astype("<i4").tobytes()

    def pca(self, mean, basis, ev, tri):
        self.matrix(mean)
        self.matrix(basis)
        self.matrix(ev)
        self.triples(tri)


def synthetic_sfm(folder, *, V=30, K=5, version=1, expression=None, seed=3, lm_text=None, contours=True):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3 * V, K)))
    raw = {
        "mean": rng.normal(0, 50, 3 * V),
        "basis": q,
        "ev": np.sort(rng.uniform(1, 100, K))[::-1],
        "tri": rng.integers(0, V, (2 * V, 3)),
    }
    w = CerealWriter()
    w.u32(version)
    w.pca(raw["mean"], raw["basis"], raw["ev"], raw["tri"])
    w.pca(np.zeros(0), np.zeros((0, 0)), np.zeros(0), np.zeros((0, 3)))  # no colour model
    if version >= 2:
        if expression is None:
            w.flag(True)
        elif expression == "pca":
            w.flag(False)
            w.i32(0)
            qe, _ = np.linalg.qr(rng.normal(size=(3 * V, 2)))
            raw["exp"] = (rng.normal(0, 1, 3 * V), qe, np.array([4.0, 1.0]))
            w.pca(*raw["exp"], raw["tri"])
        else:
            w.flag(False)
            w.i32(1)
            raw["exp"] = [("smile", rng.normal(0, 1, 3 * V)), ("frown", rng.normal(0, 1, 3 * V))]
            w.u64(2)
            for n, d in raw["exp"]:
                w.string(n)
                w.matrix(d)
    if version >= 3:
        w.flag(False)
        w.u64(1)
        w.string("nose.tip")
        w.i32(3)
    w.u64(V)
    w.b += rng.uniform(0, 1, (V, 2)).astype("<f8").tobytes()
    if version >= 4:
        w.triples(raw["tri"][:3])
    (folder / "model.bin").write_bytes(bytes(w.b))
    lm_text = lm_text if lm_text is not None else "[landmark_mappings]\n9 = 2\n31 = 7\n37 = 11\n46 = 12\n"
    (folder / "ibug_to_sfm.txt").write_text(lm_text)
    if contours:
        (folder / "sfm_model_contours.json").write_text(
            '{"model_contour": {"right_contour": [0, 1, 3], "left_contour": [4, 5]}}'
        )
    return raw


# ================================================================ BFM 2009
@pytest.mark.parametrize("n_full", [40, bfm2009.FULL_VERTICES])
def test_bfm2009_trimmed_landmarks_match_hand_computation(tmp_path, n_full):
    rng = np.random.default_rng(10)
    # a permuted trim list that leaves vertices out; at full size it has the real 53,215 entries
    n_trim = 30 if n_full == 40 else bfm2009.TRIMMED_VERTICES
    trim = rng.permutation(n_full)[:n_trim] + 1
    raw = write_bfm2009(tmp_path, n_full=n_full, trim=trim)
    assert detect_format(tmp_path).name == "bfm2009"
    assert detect_format(tmp_path / bfm2009.MORPHABLE_MODEL).name == "bfm2009"
    m = load_model(tmp_path)
    assert m.n_vertices == n_trim and m.n_identity == 4 and m.n_expression == 3
    a = np.array([1.5e5, -2e5, 3e4, 7e4])
    b = np.array([0.5, -1.0, 2.0])
    got = m.landmark_model().reconstruct(a, b)
    np.testing.assert_allclose(got, expected_landmarks_bfm2009(raw, a, b), rtol=1e-9, atol=1e-6)
    np.testing.assert_array_equal(m.identity_std, raw["shapeEV"][:, 0].astype(np.float64))
    np.testing.assert_array_equal(m.expression_std, raw["sigma_exp"][:, 0].astype(np.float64))
    # 1-based MATLAB indices became 0-based
    np.testing.assert_array_equal(m.landmark_indices, raw["keypoints"][0].astype(int) - 1)
    np.testing.assert_array_equal(m.triangles, raw["tri"].T.astype(int) - 1)
    assert len(m.contour_candidates) == 17
    for got_line, line in zip(m.contour_candidates, raw["parallel"]):
        np.testing.assert_array_equal(got_line, line.ravel().astype(int) - 1)
    assert m.units == "micrometre"


def test_bfm2009_model_shape_variant(tmp_path):
    rng = np.random.default_rng(11)
    V, K, E = 25, 3, 2
    ms = {
        "mu_shape": rng.normal(0, 5e4, (3 * V, 1)),
        "w": rng.normal(0, 1e-2, (3 * V, K)),
        "sigma": rng.uniform(1e4, 1e6, (K, 1)),
        "keypoints": rng.integers(1, V + 1, (1, N_LM)).astype(np.float64),
        "tri": rng.integers(1, V + 1, (3, 40)).astype(np.float64),
    }
    ex = {"mu_exp": rng.normal(0, 1e3, (3 * V, 1)), "w_exp": rng.normal(0, 1e3, (3 * V, E)), "sigma_exp": np.ones((E, 1))}
    scipy.io.savemat(tmp_path / bfm2009.MODEL_SHAPE, ms)
    scipy.io.savemat(tmp_path / bfm2009.EXPRESSION, ex)
    m = load_model(tmp_path)
    a, b = np.array([1e5, -1e5, 5e4]), np.array([1.0, -0.5])
    j = 7
    t = int(ms["keypoints"][0, j])
    rows = slice(3 * t - 3, 3 * t)
    want = ms["mu_shape"][rows, 0] + ex["mu_exp"][rows, 0] + ms["w"][rows] @ a + ex["w_exp"][rows] @ b
    np.testing.assert_allclose(m.landmark_model().reconstruct(a, b)[j], want, rtol=1e-12)
    assert m.contour_candidates is None


def test_bfm2009_missing_and_misshaped_keys_are_named(tmp_path):
    trim = np.arange(1, 31)
    d1 = tmp_path / "a"
    d1.mkdir()
    write_bfm2009(d1, n_full=40, trim=trim, drop="sigma_exp")
    with pytest.raises(ModelFileError, match=r"Model_Expression\.mat: key 'sigma_exp' is missing"):
        load_model(d1)
    d2 = tmp_path / "b"
    d2.mkdir()
    write_bfm2009(d2, n_full=40, trim=trim, override={"w_exp": np.zeros((3 * 29, 3), np.float32)})
    with pytest.raises(ModelFileError, match=r"Model_Expression\.mat: key 'w_exp' has shape \(87, 3\), expected \(90, any\)"):
        load_model(d2)
    d3 = tmp_path / "c"
    d3.mkdir()
    write_bfm2009(d3, n_full=40, trim=trim, override={"keypoints": np.zeros((1, N_LM))})  # 0-based by mistake
    with pytest.raises(ModelFileError, match=r"model_info\.mat: key 'keypoints' holds values in \[0, 0\], expected 1-based"):
        load_model(d3)
    d4 = tmp_path / "d"
    d4.mkdir()
    write_bfm2009(d4, n_full=40, trim=trim, override={"shapeEV": np.ones((5, 1), np.float32)})
    with pytest.raises(ModelFileError, match=r"01_MorphableModel\.mat: key 'shapeEV' has 5 entries, expected 4"):
        load_model(d4)
    d5 = tmp_path / "e"
    d5.mkdir()
    write_bfm2009(d5, n_full=40, trim=trim)
    (d5 / bfm2009.MODEL_INFO).unlink()
    with pytest.raises(ModelFileError, match=r"model_info\.mat .*trimIndex.* is missing"):
        load_model(d5)
    (d5 / bfm2009.EXPRESSION).unlink()
    with pytest.raises(ModelFileError, match=r"Model_Expression\.mat .* is missing"):
        load_model(d5 / bfm2009.MORPHABLE_MODEL)


def savemat73(path, variables):
    """A MATLAB v7.3 file (HDF5 with the 512-byte MATLAB header): numeric
    arrays stored transposed, cell arrays as object references, as MATLAB does."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        for k, v in variables.items():
            v = np.asarray(v)
            if v.dtype == object:
                r = np.empty(v.T.shape, dtype=h5py.ref_dtype)
                for i, c in np.ndenumerate(v.T):
                    r[i] = refs.create_dataset(f"{k}{len(refs)}", data=np.asarray(c).T).ref
                f.create_dataset(k, data=r)
            else:
                f[k] = v.T
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .".ljust(116) + bytes(8)
    with open(path, "r+b") as fh:
        fh.write(header + b"\x00\x02IM")


def test_bfm2009_reads_matlab_v73_files(tmp_path):
    trim = np.random.default_rng(4).permutation(40)[:30] + 1
    raw = write_bfm2009(tmp_path, n_full=40, trim=trim)
    v5 = load_model(tmp_path)
    with pytest.raises(NotImplementedError):
        savemat73(tmp_path / "probe.mat", {"x": np.zeros((2, 3))})
        scipy.io.loadmat(tmp_path / "probe.mat")  # scipy sees a v7.3 file
    (tmp_path / "probe.mat").unlink()
    savemat73(tmp_path / bfm2009.EXPRESSION, {k: raw[k] for k in ("mu_exp", "w_exp", "sigma_exp")})
    cells = np.empty((1, 17), dtype=object)
    for i, ln in enumerate(raw["parallel"]):
        cells[0, i] = ln
    savemat73(tmp_path / bfm2009.PARALLEL, {"parallel": cells})
    v73 = load_model(tmp_path)
    np.testing.assert_array_equal(v73.mean, v5.mean)
    np.testing.assert_array_equal(v73.expression_basis, v5.expression_basis)
    for a, b in zip(v73.contour_candidates, v5.contour_candidates):
        np.testing.assert_array_equal(a, b)


# ================================================================ face3d
def test_face3d_bfm_mat_landmarks_match_hand_computation(tmp_path):
    path = tmp_path / "BFM.mat"
    raw = write_face3d(path)
    # the nesting face3d's loader relies on
    assert scipy.io.loadmat(path)["model"][0, 0]["shapeMU"].shape == (150, 1)
    for p in (path, tmp_path):
        assert detect_format(p).name == "face3d"
    renamed = tmp_path / "my_bfm.mat"
    path.rename(renamed)
    assert detect_format(renamed).name == "face3d"  # recognised by its 'model' struct
    m = load_model(renamed)
    a, b = np.array([1e5, 2e5, -3e5, 4e4]), np.array([0.3, -0.7, 1.2])
    got = m.landmark_model().reconstruct(a, b)
    for j in (0, 16, 30, 67):
        k = int(raw["kpt_ind"][0, j])  # 1-based
        r = slice(3 * k - 3, 3 * k)
        want = raw["shapeMU"][r, 0] + raw["expMU"][r, 0] + raw["shapePC"][r].astype(np.float64) @ a + raw["expPC"][r] @ b
        np.testing.assert_allclose(got[j], want, rtol=1e-10)
    np.testing.assert_array_equal(m.triangles, raw["tri"].T.astype(int) - 1)
    np.testing.assert_array_equal(m.expression_std, raw["expEV"][:, 0])
    # BFM_info.mat beside it (model_info.parallel) gives the 17 contour lines, 1-based -> 0-based
    assert len(m.contour_candidates) == 17
    np.testing.assert_array_equal(m.contour_candidates[3], raw["parallel"][0, 3].ravel().astype(int) - 1)
    (tmp_path / "BFM_info.mat").unlink()
    renamed.rename(path)
    assert load_model(tmp_path).contour_candidates is None


def test_face3d_errors_name_the_field(tmp_path):
    path = tmp_path / "BFM.mat"
    write_face3d(path, drop="kpt_ind", info=False)
    with pytest.raises(ModelFileError, match=r"BFM\.mat:model: key 'kpt_ind' is missing"):
        load_model(path)
    write_face3d(path, override={"expPC": np.zeros((10, 3))}, info=False)
    with pytest.raises(ModelFileError, match=r"key 'expPC' has shape \(10, 3\), expected \(150, any\)"):
        load_model(path)


# ================================================================ 3DDFA_V2
def test_tddfa_v2_pickle(tmp_path):
    path = tmp_path / "bfm_noneck_v3.pkl"
    raw = write_tddfa(path)
    for p in (path, tmp_path):
        assert detect_format(p).name == "tddfa_v2"
    m = load_model(tmp_path)
    a, b = np.linspace(-1e5, 1e5, 40), np.linspace(-1, 1, 10)
    got = m.landmark_model().reconstruct(a, b)
    kp = raw["keypoints"]
    # 3DDFA_V2's own arithmetic: u[keypoints] + w_shp[keypoints] @ a + w_exp[keypoints] @ b, reshaped (68, 3)
    want = (
        raw["u"][kp, 0].astype(np.float64)
        + raw["w_shp"][kp].astype(np.float64) @ a
        + raw["w_exp"][kp].astype(np.float64) @ b
    ).reshape(N_LM, 3)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_array_equal(m.triangles, raw["tri"].T)
    from dhm_data.models.formats.bfm68_text import ASSUMED_IDENTITY_STD

    assert np.all(m.identity_std == ASSUMED_IDENTITY_STD)
    # tri.pkl beside the model replaces 'tri', as 3DDFA_V2 does for bfm_noneck_v3
    raw2 = write_tddfa(path, tri_file=True)
    np.testing.assert_array_equal(load_model(path).triangles, raw2["tri_file"].T)


def test_tddfa_v2_errors_and_refuses_code(tmp_path):
    path = tmp_path / "bfm_noneck_v3.pkl"
    write_tddfa(path, drop="w_exp")
    with pytest.raises(ModelFileError, match=r"bfm_noneck_v3\.pkl: key 'w_exp' is missing"):
        load_model(path)
    write_tddfa(path, override={"keypoints": np.arange(204)[::-1].copy()})
    with pytest.raises(ModelFileError, match=r"'keypoints' is not the flattened \[3k, 3k\+1, 3k\+2\]"):
        load_model(path)
    write_tddfa(path, override={"w_shp": np.zeros((7, 40), np.float32)})
    with pytest.raises(ModelFileError, match=r"key 'w_shp' has shape \(7, 40\), expected \(180, components\)"):
        load_model(path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(path, "wb") as f:
        pickle.dump({"u": Evil()}, f)
    with pytest.raises(ModelFileError, match="refusing to load"):
        load_model(path)


# ================================================================ Surrey Face Model
@pytest.mark.parametrize("version,expression", [(1, None), (2, None), (2, "pca"), (3, "blendshapes"), (4, "pca")])
def test_surrey_cereal_layout_synthetic(tmp_path, version, expression):
    raw = synthetic_sfm(tmp_path, version=version, expression=expression)
    assert detect_format(tmp_path).name == "surrey"
    m = load_model(tmp_path / "model.bin")
    V = 30
    c = np.array([1.0, -0.5, 0.25, 2.0, -1.0])
    want_mean = raw["mean"].astype(np.float32).astype(np.float64)
    basis = raw["basis"].astype(np.float32).astype(np.float64) * np.sqrt(raw["ev"].astype(np.float32).astype(np.float64))
    want = want_mean + basis @ c
    if expression == "pca":
        em, eb, ev = (x.astype(np.float32).astype(np.float64) for x in raw["exp"])
        want = want + em
        np.testing.assert_allclose(m.expression_basis.reshape(3 * V, -1), eb * np.sqrt(ev), rtol=1e-12)
    elif expression == "blendshapes":
        assert m.metadata["expression_names"] == ["smile", "frown"]
        np.testing.assert_allclose(m.expression_basis[:, :, 1].reshape(-1), raw["exp"][1][1].astype(np.float32), rtol=1e-7)
    else:
        assert m.n_expression == 0
    np.testing.assert_allclose(m.reconstruct(c).reshape(-1), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(m.triangles, raw["tri"])
    lm = np.full(N_LM, -1)
    lm[[8, 30, 36, 45]] = [2, 7, 11, 12]
    np.testing.assert_array_equal(m.landmark_indices, lm)
    assert [list(x) for x in m.contour_candidates[:9]] == [[0, 1, 3]] * 8 + [[2]]
    assert [list(x) for x in m.contour_candidates[9:]] == [[4, 5]] * 8
    assert m.units == "millimetre" and m.metadata["eos_class_version"] == version


def test_surrey_errors(tmp_path):
    synthetic_sfm(tmp_path)
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[:-100])
    with pytest.raises(ModelFileError, match=r"model\.bin: truncated or mis-shaped at byte \d+ reading texture_coordinates"):
        load_model(tmp_path)
    (tmp_path / "model.bin").write_bytes(data)
    (tmp_path / "ibug_to_sfm.txt").unlink()
    with pytest.raises(ModelFileError, match=r"ibug_to_sfm\.txt .* is missing"):
        load_model(tmp_path)
    (tmp_path / "ibug_to_sfm.txt").write_text("[other]\n1 = 2\n")
    with pytest.raises(ModelFileError, match=r"table \[landmark_mappings\] is missing"):
        load_model(tmp_path)
    (tmp_path / "ibug_to_sfm.txt").write_text("[landmark_mappings]\n69 = 2\n")
    with pytest.raises(ModelFileError, match=r"entry '69' = 2, expected a 1-based iBUG id 1-68"):
        load_model(tmp_path)
    # a mapped vertex this (lower-resolution) model does not have is missing, not invented
    (tmp_path / "ibug_to_sfm.txt").write_text("[landmark_mappings]\n9 = 2\n31 = 999\n")
    m = load_model(tmp_path)
    assert m.landmark_indices[30] == -1 and m.metadata["landmarks_beyond_model"] == [31]


def _ibug_map_by_regex(path):
    """Independent reading of ibug_to_sfm.txt: 'id = vertex' lines of [landmark_mappings]."""
    text = path.read_text().split("[landmark_mappings]")[1].split("[")[0]
    return {int(k) - 1: int(v) for k, v in re.findall(r"^\s*(\d+)\s*=\s*(\d+)", text, re.M)}


def test_surrey_real_model(sfm_dir):
    assert detect_format(sfm_dir).name == "surrey"
    m = load_model(sfm_dir)
    assert m.n_vertices * 3 == struct.unpack("<i", (sfm_dir / "sfm_shape_3448.bin").read_bytes()[4:8])[0]
    assert m.n_vertices == 3448 and m.n_identity == 63 and m.n_expression == 6
    mapping = _ibug_map_by_regex(sfm_dir / "ibug_to_sfm.txt")
    want = np.full(N_LM, -1)
    want[list(mapping)] = list(mapping.values())
    np.testing.assert_array_equal(m.landmark_indices, want)
    # the 16 jaw points other than the chin and the two inner mouth corners are unmapped
    missing = set(np.flatnonzero(m.landmark_indices < 0) + 1)
    assert missing == set(range(1, 9)) | set(range(10, 18)) | {61, 65}
    assert m.triangles.shape[1] == 3 and m.triangles.max() < m.n_vertices
    # y-up frame: eyebrows (iBUG 18-27) above the chin (iBUG 9)
    assert np.all(m.mean[m.landmark_indices[17:27], 1] > m.mean[m.landmark_indices[8], 1])
    assert len(m.contour_candidates) == 17
    lm = m.landmark_model()
    assert np.isnan(lm.mean[0]).all() and not np.isnan(lm.mean[30]).any()


def test_surrey_real_model_matches_eos(sfm_dir):
    eos = pytest.importorskip("eos", reason="eos-py not installed (pip install eos-py) for the side-by-side check")
    ours = surrey.read_model_bin(sfm_dir / "sfm_shape_3448.bin")
    theirs = eos.morphablemodel.load_model(str(sfm_dir / "sfm_shape_3448.bin"))
    sm = theirs.get_shape_model()
    np.testing.assert_array_equal(ours["shape"]["mean"][:, 0], np.asarray(sm.get_mean(), np.float64))
    np.testing.assert_array_equal(ours["shape"]["basis"], np.asarray(sm.get_orthonormal_pca_basis(), np.float64))
    np.testing.assert_array_equal(ours["shape"]["eigenvalues"][:, 0], np.asarray(sm.get_eigenvalues(), np.float64))
    np.testing.assert_array_equal(ours["shape"]["triangles"], np.asarray(sm.get_triangle_list()))
    np.testing.assert_allclose(ours["texture_coordinates"], np.asarray(theirs.get_texture_coordinates()))
    # reconstruction: our basis x coefficients == eos draw_sample (standard-normal coefficients)
    m = load_model(sfm_dir)
    c = np.random.default_rng(0).normal(size=m.n_identity).astype(np.float32)
    np.testing.assert_allclose(
        m.reconstruct(c.astype(np.float64)).reshape(-1), np.asarray(sm.draw_sample(c.tolist())), rtol=0, atol=1e-3
    )
    bs = eos.morphablemodel.load_blendshapes(str(sfm_dir / "expression_blendshapes_3448.bin"))
    assert m.metadata["expression_names"] == [b.name for b in bs]
    for i, b in enumerate(bs):
        np.testing.assert_array_equal(m.expression_basis[:, :, i].reshape(-1), np.asarray(b.deformation, np.float64))


def test_surrey_parser_reads_what_eos_writes(tmp_path):
    eos = pytest.importorskip("eos", reason="eos-py not installed (pip install eos-py) for the side-by-side check")
    rng = np.random.default_rng(5)
    V, K = 20, 4
    tri = rng.integers(0, V, (10, 3)).tolist()
    q, _ = np.linalg.qr(rng.normal(size=(3 * V, K)))
    shape = eos.morphablemodel.PcaModel(
        rng.normal(size=(3 * V, 1)).astype(np.float32), q.astype(np.float32), np.arange(K, 0, -1).reshape(-1, 1).astype(np.float32), tri
    )
    qe, _ = np.linalg.qr(rng.normal(size=(3 * V, 2)))
    expr = eos.morphablemodel.PcaModel(
        rng.normal(size=(3 * V, 1)).astype(np.float32), qe.astype(np.float32), np.array([[2.0], [0.5]], np.float32), tri
    )
    empty = eos.morphablemodel.PcaModel()
    model = eos.morphablemodel.MorphableModel(
        shape, expr, empty, {"nose": 3, "chin": 5}, rng.uniform(size=(V, 2)).tolist(), tri[:4]
    )
    eos.morphablemodel.save_model(model, str(tmp_path / "m.bin"))
    raw = surrey.read_model_bin(tmp_path / "m.bin")
    assert raw["version"] == 4 and raw["landmark_definitions"] == {"nose": 3, "chin": 5}
    np.testing.assert_array_equal(raw["texture_triangles"], np.asarray(tri[:4]))
    kind, em = raw["expression"]
    assert kind == "pca"
    np.testing.assert_array_equal(em["basis"], qe.astype(np.float32))
    (tmp_path / "ibug_to_sfm.txt").write_text("[landmark_mappings]\n31 = 3\n")
    m = load_model(tmp_path)
    c, e = [0.5, -1.0, 2.0, 0.1], [1.0, -2.0]
    mesh = model.draw_sample(c, e, [])
    np.testing.assert_allclose(m.reconstruct(c, e), np.asarray(mesh.vertices), atol=1e-5)


# ================================================================ bfm68 text (real)
def test_bfm68_folder_detected_and_loaded(bfm68_dir):
    assert detect_format(bfm68_dir).name == "bfm68-text"
    m = load_model(bfm68_dir)
    u = np.loadtxt(bfm68_dir / "u_base.txt")
    np.testing.assert_array_equal(m.mean.reshape(-1), u)


# ================================================================ compact
def _full_model(seed=0):
    rng = np.random.default_rng(seed)
    V, K, E = 80, 5, 3
    li = rng.choice(V, N_LM)
    li[[3, 60]] = -1
    return MorphableModel(
        name="synthetic test model",
        mean=rng.normal(size=(V, 3)),
        identity_basis=rng.normal(size=(V, 3, K)),
        expression_basis=rng.normal(size=(V, 3, E)),
        identity_std=rng.uniform(1, 2, K),
        expression_std=rng.uniform(1, 2, E),
        landmark_indices=li,
        triangles=rng.integers(0, V, (30, 3)),
        contour_candidates=tuple(rng.choice(V, n) for n in rng.integers(1, 6, 17)),
        units="millimetre",
        source="/some/where/model.bin",
        metadata={"format": "test", "names": ["a", "b"], "n": 3},
    )


def _assert_same(a: MorphableModel, b: MorphableModel):
    for f in ("name", "units", "source", "metadata"):
        assert getattr(a, f) == getattr(b, f), f
    for f in ("mean", "identity_basis", "expression_basis", "identity_std", "expression_std", "landmark_indices"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
        assert getattr(b, f).dtype == (np.int64 if f == "landmark_indices" else np.float64)
    if a.triangles is None:
        assert b.triangles is None
    else:
        np.testing.assert_array_equal(a.triangles, b.triangles)
    if a.contour_candidates is None:
        assert b.contour_candidates is None
    else:
        assert len(b.contour_candidates) == 17
        for x, y in zip(a.contour_candidates, b.contour_candidates):
            np.testing.assert_array_equal(x, y)


def test_compact_round_trip_every_field(tmp_path):
    m = _full_model()
    p = save_compact(m, tmp_path / "model" / "landmarks68.npz")
    assert p.is_file() and [x.name for x in p.parent.iterdir()] == ["landmarks68.npz"]  # no temporary left
    assert detect_format(p).name == "compact" and detect_format(p.parent).name == "compact"
    _assert_same(m, load_model(p))
    lm = m.landmark_model()  # NaN rows, no triangles / contours
    save_compact(lm, p)  # overwrite in place
    back = load_model(p.parent)
    _assert_same(lm, back)
    assert np.isnan(back.mean[3]).all()


def test_compact_of_real_sfm_landmark_model(tmp_path, sfm_dir):
    lm = load_model(sfm_dir).landmark_model()
    p = save_compact(lm, tmp_path / "sfm68.npz")
    back = load_model(p)
    _assert_same(lm, back)
    c = np.linspace(-1, 1, lm.n_identity)
    np.testing.assert_allclose(back.reconstruct(c), lm.reconstruct(c), rtol=1e-13)
    assert p.stat().st_size < 200_000


def test_compact_errors(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, mean=np.zeros((3, 3)))
    with pytest.raises(ModelFileError, match="dhm_compact_format"):
        compact.load(p)
    with pytest.raises(ModelFileError):
        detect_format(p)  # an unmarked .npz is no model
    np.savez(p, dhm_compact_format=np.array("dhm-data compact morphable model v99"))
    with pytest.raises(ModelFileError, match="v99.*expected 'dhm-data compact morphable model v1'"):
        load_model(p)
    m = _full_model()
    save_compact(m, p)
    z = dict(np.load(p))
    z["identity_std"] = z["identity_std"][:2]
    np.savez(p, **z)
    with pytest.raises(ModelFileError, match=r"x\.npz: key 'identity_std' has shape \(2,\), expected \(5,\)"):
        load_model(p)
    z.pop("landmark_indices")
    np.savez(p, **z)
    with pytest.raises(ModelFileError, match="'landmark_indices' missing"):
        load_model(p)
    save_compact(m, tmp_path / "y.npz")
    with pytest.raises(ModelFileError, match="holds 2 compact model files"):
        load_model(tmp_path)
    assert z["dhm_compact_format"] == FORMAT_MARKER


def test_unknown_path_errors(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        load_model(tmp_path / "nope")
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(ModelFileError, match="not a morphable model"):
        load_model(tmp_path)

"""Contract tests: every registered dataset reader and every model format, one
parametrised test each.  Adding a reader (datasets.READERS) or a format
(models.formats) without its entry below fails ``test_every_*_has_an_entry``.

Readers: a dummy tree in the raw layout (``dhm-data synth``), one label
planted at a known position in the dataset's own on-disk convention, then
items -> samples with the shapes, dtypes and 0-based pixel convention of
:class:`dhm_data.datasets.base.Sample`.  Formats: a dummy file of the format
-> detected as it -> a consistent :class:`MorphableModel` of a known family.
"""

import numpy as np
import pytest
import scipy.io as sio

from dhm_data.datasets import READERS, get_reader
from dhm_data.datasets.base import Item, Sample
from dhm_data.models.formats import FAMILIES, _FORMAT_MODULES, detect_format, load_model, model_family
from dhm_data.models.morphable import MorphableModel
from dhm_data.synth import synthesize

#: the point planted and where it must come out, 0-based (x right, y down)
PLANT_INDEX, PLANT_XY = 30, (100.0, 50.0)


def _plant_aflw2000(root, item: Item):
    mat = item.paths[1]
    m = sio.loadmat(mat)
    m["pt3d_68"][:2, PLANT_INDEX] = np.array(PLANT_XY) + 1  # 1-based on disk
    sio.savemat(mat, {k: v for k, v in m.items() if not k.startswith("__")})


def _plant_300wlp(root, item: Item):
    lm = next(p for p in item.paths if p.name.endswith("_pts.mat"))
    m = sio.loadmat(lm)
    m["pts_3d"][PLANT_INDEX] = np.array(PLANT_XY) + 1  # 1-based on disk, (68, 2)
    sio.savemat(lm, {k: v for k, v in m.items() if not k.startswith("__")})


def _plant_ls3dw(root, item: Item):
    from dhm_data.datasets.labels import read_landmarks_t7
    from dhm_data.formats.t7 import t7_bytes  # the Torch7 encoder the synthetic writer uses

    t7 = next(p for p in item.paths if p.suffix == ".t7")
    lm = read_landmarks_t7(t7).astype(np.float32)
    lm[PLANT_INDEX] = PLANT_XY  # 0-based on disk
    t7.write_bytes(t7_bytes(lm))


#: reader name -> (synth args, plant a label in the on-disk convention, item picker, has 3D landmarks / parameters)
READER_CONTRACT = {
    "aflw2000": (4, _plant_aflw2000, lambda its: its[0], True, True),
    "300wlp": (2, _plant_300wlp, lambda its: next(i for i in its if not i.flipped and any(
        p.name.endswith("_pts.mat") for p in i.paths)), False, True),
    "ls3dw": (7, _plant_ls3dw, lambda its: its[0], False, False),
}


def test_every_reader_has_an_entry():
    assert set(READER_CONTRACT) == set(READERS)


@pytest.mark.parametrize("name", sorted(READERS))
def test_reader_contract(name, tmp_path):
    n, plant, pick, has_3d, has_params = READER_CONTRACT[name]
    reader_cls = get_reader(name)
    synthesize(name, tmp_path / "raw", n, seed=1)
    reader = reader_cls(tmp_path / "raw")
    items = reader.items()
    assert items and all(isinstance(it, Item) for it in items)
    assert len({it.name for it in items}) == len(items)
    target = pick(items)
    plant(reader.root, target)
    for it in items:
        s = reader.load(it)
        assert isinstance(s, Sample) and s.name == it.name and s.subset == it.subset
        assert s.landmarks_2d.shape == (68, 2) and s.landmarks_2d.dtype == np.float64
        h, w = s.image_size
        assert isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0
        assert (s.landmarks_3d is not None) == has_3d
        if has_3d:
            assert s.landmarks_3d.shape == (68, 3) and s.landmarks_3d.dtype == np.float64
            assert np.array_equal(s.landmarks_3d[:, :2], s.landmarks_2d) or s.landmark_source != "pt3d_68"
        assert s.has_parameters == has_params
        if has_params:
            assert s.pose_para.shape == (7,) and s.pose_para.dtype == np.float64
            assert s.shape_para.ndim == 1 and s.exp_para.ndim == 1
        assert s.source_id and s.landmark_source and isinstance(s.warnings, list)
        if it == target:
            assert tuple(s.landmarks_2d[PLANT_INDEX]) == pytest.approx(PLANT_XY, abs=1e-4)  # 0-based pixels


def _model_maker(fmt):
    """Write a dummy file of ``fmt`` into a folder; returns (path, family)."""
    import test_model_io as io

    def bfm2009(d):
        io.write_bfm2009(d, n_full=40, trim=np.random.default_rng(0).permutation(40)[:30] + 1)
        return d, "bfm2009"

    def face3d(d):
        io.write_face3d(d / "BFM.mat")
        return d / "BFM.mat", "bfm2009"

    def tddfa_v2(d):
        io.write_tddfa(d / "bfm_noneck_v3.pkl")
        return d / "bfm_noneck_v3.pkl", "bfm2009"

    def surrey(d):
        io.synthetic_sfm(d)
        return d / "model.bin", "surrey"

    def bfm68_text(d):
        rng = np.random.default_rng(4)
        np.savetxt(d / "u_base.txt", rng.normal(0, 5e4, 204))
        np.savetxt(d / "w_shp_base.txt", rng.normal(0, 1, (204, 40)))
        np.savetxt(d / "w_exp_base.txt", rng.normal(0, 1, (204, 10)))
        return d, "bfm2009"

    def compact(d):
        from dhm_data.models.formats.compact import save_compact
        from dhm_data.models.synthetic import load_synthetic_model

        save_compact(load_synthetic_model(), d / "model.npz")
        return d / "model.npz", "synthetic"

    return {"bfm2009": bfm2009, "face3d": face3d, "tddfa_v2": tddfa_v2, "surrey": surrey,
            "bfm68_text": bfm68_text, "compact": compact}.get(fmt)


def test_every_model_format_has_an_entry():
    assert all(_model_maker(m) is not None for m in _FORMAT_MODULES), _FORMAT_MODULES


@pytest.mark.parametrize("module", _FORMAT_MODULES)
def test_model_format_contract(module, tmp_path):
    import importlib

    fmt = importlib.import_module(f"dhm_data.models.formats.{module}").FORMAT
    path, family = _model_maker(module)(tmp_path)
    assert detect_format(path).name == fmt.name
    m = load_model(path)
    assert isinstance(m, MorphableModel)
    V, K, E = m.n_vertices, m.n_identity, m.n_expression
    assert m.mean.shape == (V, 3) and m.mean.dtype == np.float64
    assert m.identity_basis.shape == (V, 3, K) and m.expression_basis.shape == (V, 3, E)
    assert m.identity_std.shape == (K,) and m.expression_std.shape == (E,)
    li = m.landmark_indices
    assert li.shape == (68,) and np.issubdtype(li.dtype, np.integer) and li.min() >= -1 and li.max() < V
    assert m.triangles is None or (m.triangles.ndim == 2 and m.triangles.shape[1] == 3 and m.triangles.max() < V)
    assert model_family(m) == family and family in FAMILIES
    lm = m.landmark_model()
    assert lm.mean.shape == (68, 3) and model_family(lm) == family

"""The prepare step's batched posing against one-at-a-time posing."""

import numpy as np
import pytest

from dhm_data.datasets.base import Sample
from dhm_data.errors import PrepareError
from dhm_data.geometry import camera
from dhm_data.geometry.landmarks68 import MIRROR_68
from dhm_data.models.synthetic import load_synthetic_model
from dhm_data.prepare.row import posed_landmarks, source_landmarks_3d


@pytest.fixture(scope="module")
def lm_model():
    return load_synthetic_model().landmark_model()


def _sample(rng, name, **kw):
    pose = np.r_[rng.uniform(-0.5, 0.5, 3), rng.uniform(150, 300, 2), 0.0, rng.uniform(8e-4, 1.2e-3)]
    return Sample(name=name, subset="IBUG", image_path=None, landmarks_2d=np.zeros((68, 2)), pose_para=pose,
                  shape_para=rng.normal(0, 1e4, 199), exp_para=rng.normal(0, 1, 29), image_size=(450, 450), **kw)


def test_batched_posing_equals_one_at_a_time(lm_model):
    rng = np.random.default_rng(0)
    own = _sample(rng, "a")
    given = _sample(rng, "b", landmarks_3d=rng.normal(200, 30, (68, 3)))
    src = _sample(rng, "c")
    mirrored = _sample(rng, "d", extra={"mirror_source": {"pose_para": src.pose_para, "shape_para": src.shape_para,
                                                          "exp_para": src.exp_para, "width": 450}})
    got = source_landmarks_3d([own, given, mirrored], lm_model)
    one = posed_landmarks(lm_model, own.pose_para, own.shape_para, own.exp_para, 450)
    np.testing.assert_allclose(got[0], one, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(got[1], given.landmarks_3d)
    # the mirror of the original's posed landmarks: x -> W - 1 - x, points re-ordered
    orig = posed_landmarks(lm_model, src.pose_para, src.shape_para, src.exp_para, 450)
    want = orig[np.asarray(MIRROR_68)].copy()
    want[:, 0] = 449 - want[:, 0]
    np.testing.assert_allclose(got[2], want, rtol=0, atol=1e-9)
    # and the single-sample mirror path agrees
    np.testing.assert_allclose(posed_landmarks(lm_model, src.pose_para, src.shape_para, src.exp_para, 450, 450), want,
                               rtol=0, atol=1e-9)
    # one hand-checkable point: the model's landmark 30 posed by camera.model_to_image directly
    S = lm_model.reconstruct(own.shape_para[: lm_model.n_identity], own.exp_para[: lm_model.n_expression])
    np.testing.assert_allclose(got[0][30], camera.model_to_image(S[30:31], own.pose_para, 450)[0], atol=1e-9)


def test_a_sample_with_neither_landmarks_nor_parameters_is_rejected(lm_model):
    bare = Sample(name="x", subset="s", image_path=None, landmarks_2d=np.zeros((68, 2)), image_size=(10, 10))
    with pytest.raises(PrepareError, match="no 3D landmarks and no 3DMM parameters"):
        source_landmarks_3d([bare], lm_model)


def test_reconstruct_batched_and_strided_bases_equal_the_definition(lm_model):
    """S = mean + sum_k a_k B[:, :, k] (+ expressions), for one vector, a batch,
    and a basis that is not C-contiguous (the einsum path)."""
    import dataclasses

    rng = np.random.default_rng(1)
    a = rng.normal(0, 1e4, (4, 2, lm_model.n_identity))
    b = rng.normal(0, 1, (4, 2, lm_model.n_expression))
    want = lm_model.mean + np.stack([[
        sum(a[i, j, k] * lm_model.identity_basis[:, :, k] for k in range(lm_model.n_identity))
        + sum(b[i, j, e] * lm_model.expression_basis[:, :, e] for e in range(lm_model.n_expression))
        for j in range(2)] for i in range(4)])
    np.testing.assert_allclose(lm_model.reconstruct(a, b), want, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(lm_model.reconstruct(a[1, 0], b[1, 0]), want[1, 0], rtol=1e-9, atol=1e-6)
    strided = dataclasses.replace(lm_model, identity_basis=np.asfortranarray(lm_model.identity_basis))
    assert not strided.identity_basis.flags.c_contiguous
    np.testing.assert_allclose(strided.reconstruct(a, b), want, rtol=1e-9, atol=1e-6)


def test_stored_dhms_are_the_render_of_the_stored_landmarks(synthetic_tree, tmp_path):
    """Every DHM a build stores equals quantise(render_dhm(stored landmarks_3d)):
    re-rendering from a shard (e.g. after a flip) reproduces it exactly."""
    from dhm_data.build.flow import BuildRequest, run_build
    from dhm_data.prepare.dhm import render_dhm
    from dhm_data.shards import read_columns
    from dhm_data.shards.schema import quantise

    out = tmp_path / "out"
    run_build(BuildRequest("300wlp", synthetic_tree("300wlp", 12), out, progress=False), echo=lambda m: None)
    n = 0
    for shard in sorted(out.glob("*/shard-*.h5")):
        cols = read_columns(shard, ["landmarks_3d", "dhm"], dhm_dtype="uint8")
        for lm3, dhm in zip(cols["landmarks_3d"], cols["dhm"]):
            np.testing.assert_array_equal(dhm, quantise(render_dhm(lm3, 224, 1.0)))
            n += 1
    assert n == 24

"""The one landmark-error module: distances, the sqrt(w h) normaliser, NME
-- hand-computed cases, missing points, and its users agreeing with it."""

import math

import numpy as np

from dhm_data.geometry import landmark_error as le


def test_hand_computed_nme():
    gt = np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 9.0], [0.0, 9.0]])          # box 4 x 9: sqrt(36) = 6
    pred = gt + np.array([[3.0, 4.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])   # one point 5 px off
    np.testing.assert_allclose(le.point_errors(pred, gt), [5, 0, 0, 0])
    assert le.box_size(gt) == 6.0
    assert le.mean_error(pred, gt) == 1.25
    assert le.nme(pred, gt) == 1.25 / 6


def test_missing_points_are_left_out_of_distance_and_box():
    gt = np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 9.0], [100.0, 100.0]])
    pred = np.array([[3.0, 4.0], [4.0, 0.0], [4.0, 9.0], [np.nan, 0.0]])
    # the fourth point is missing in pred: it leaves the mean and the box (4 x 9 again)
    assert le.nme(pred, gt) == (5 / 3) / 6
    assert math.isnan(le.nme(np.full((4, 2), np.nan), gt))


def test_3d_distance_over_the_2d_box_and_batches():
    gt = np.zeros((2, 3, 3))
    gt[:, :, :2] = [[0, 0], [2, 0], [2, 8]]                                   # box 2 x 8: 4
    pred = gt.copy()
    pred[1, 0] += [1.0, 2.0, 2.0]                                              # 3 px in 3D, sqrt(5) in 2D
    np.testing.assert_allclose(le.nme(pred, gt, dims=3), [0, 1 / 4])
    np.testing.assert_allclose(le.nme(pred, gt), [0, math.sqrt(5) / 3 / 4])


def test_the_users_share_it():
    """The evaluation's NME, the fit's residual and the build's label check
    are this module's NME (same numbers on the same input)."""
    from dhm_data.evaluation import metrics
    from dhm_data.fit.result import fit_residuals

    rng = np.random.default_rng(1)
    gt = 100 + 30 * rng.standard_normal((5, 68, 2))
    pred = gt + rng.standard_normal((5, 68, 2))
    np.testing.assert_array_equal(metrics.nme(pred, gt), le.nme(pred, gt))
    valid = np.ones((5, 68), bool)
    valid[:, :17] = False
    nme, px = fit_residuals(pred, gt, valid)
    np.testing.assert_allclose(nme, le.nme(pred[:, 17:], gt[:, 17:]), rtol=1e-15)
    np.testing.assert_allclose(px, le.mean_error(pred[:, 17:], gt[:, 17:]), rtol=1e-15)

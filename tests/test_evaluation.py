"""The evaluation protocol (docs/evaluation.md) pinned on hand-computed cases,
independent re-implementations, and the real AFLW2000-3D ground truth."""

import json
import math

import numpy as np
import pytest

from dhm_data.errors import EvaluationError, PredictionError
from dhm_data.evaluation import comparison_table
from dhm_data.evaluation import metrics as ev
from dhm_data.geometry.landmarks68 import landmark_array


# ------------------------------------------------------------------ a case computed on paper
def _box_points(x0, y0, w, h, rng):
    """68 points whose tight box is exactly [x0, x0+w] x [y0, y0+h]."""
    p = np.column_stack([rng.uniform(x0, x0 + w, 68), rng.uniform(y0, y0 + h, 68)])
    p[0] = (x0, y0)
    p[1] = (x0 + w, y0 + h)
    return p


@pytest.fixture
def paper_case():
    """Four images, NMEs worked out by hand:

    1. box 4 x 9 (d = 6); every point off by (3, 4) -> error 5 -> NME 5/6
    2. box 16 x 4 (d = 8); 34 points off by (0, 2), 34 exact -> mean error 1 -> NME 1/8
    3. box 10 x 10 (d = 10); one point off by (6, 8) -> mean error 10/68 -> NME 1/68
    4. exact -> NME 0
    yaws 10, -45, 95 (wrap-around, last bin), -30 (edge: first bin).
    """
    rng = np.random.default_rng(3)
    g = np.stack([_box_points(0, 0, 4, 9, rng), _box_points(10, 0, 16, 4, rng),
                  _box_points(5, 5, 10, 10, rng), _box_points(0, 0, 7, 7, rng)])
    p = g.copy()
    p[0] += (3.0, 4.0)
    p[1, 34:] += (0.0, 2.0)
    p[2, 40] += (6.0, 8.0)
    yaw = np.array([10.0, -45.0, 95.0, -30.0])
    expected = np.array([5 / 6, 1 / 8, 1 / 68, 0.0])
    return p, g, yaw, expected


def test_nme_hand_computed(paper_case):
    p, g, yaw, expected = paper_case
    np.testing.assert_allclose(ev.nme(p, g), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ev.box_size(g), [6.0, 8.0, 10.0, 7.0], atol=1e-12)


def test_z_is_ignored_and_layouts_agree(paper_case):
    p, g, yaw, expected = paper_case
    z = np.random.default_rng(0).normal(0, 50, (4, 68, 1))
    p3 = np.concatenate([p, z], axis=2)
    g3 = np.concatenate([g, -z], axis=2)
    np.testing.assert_allclose(ev.nme(p3, g3), expected, atol=1e-12)
    for layout in (p3, p.transpose(0, 2, 1), p3.transpose(0, 2, 1)):
        np.testing.assert_allclose(landmark_array(layout, dims=2), p, atol=0)
        r = ev.evaluate(layout, g, yaw)
        np.testing.assert_allclose(r.nme, expected, atol=1e-12)


def test_bins_balanced_and_overall_hand_computed(paper_case):
    p, g, yaw, expected = paper_case
    np.testing.assert_array_equal(ev.yaw_bin_index(yaw), [0, 1, 2, 0])
    r = ev.evaluate(p, g, yaw, label="paper")
    assert [b.count for b in r.bins] == [2, 1, 1]
    bin_means = [(5 / 6 + 0) / 2, 1 / 8, 1 / 68]
    assert [b.mean for b in r.bins] == pytest.approx(bin_means, abs=1e-12)
    assert r.bins[0].std == pytest.approx(5 / 12, abs=1e-12)          # population std of {5/6, 0}
    assert r.balanced_mean == pytest.approx(sum(bin_means) / 3, abs=1e-12)
    m = sum(bin_means) / 3
    assert r.balanced_std == pytest.approx(math.sqrt(sum((b - m) ** 2 for b in bin_means) / 3), abs=1e-12)
    assert r.overall_mean == pytest.approx((5 / 6 + 1 / 8 + 1 / 68) / 4, abs=1e-12)
    assert r.headline == ("balanced mean", r.balanced_mean)
    # 2 of 4 above 7% and above 6%
    assert r.failure_rate == 0.5 and r.seed_failure_rate == 0.5
    assert r.threshold == 0.07 and r.seed_failure_threshold == 0.06


def test_bin_edges():
    yaw = np.array([0, 30, -30, 30.0001, 60, -60, 60.0001, 90, 91, -179, 351.2])
    np.testing.assert_array_equal(ev.yaw_bin_index(yaw), [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    with pytest.raises(EvaluationError, match="NaN"):
        ev.yaw_bin_index([1.0, np.nan])


def test_no_yaw_gives_overall_headline_and_empty_bin_gives_none(paper_case):
    p, g, yaw, expected = paper_case
    r = ev.evaluate(p, g)
    assert r.bins is None and r.balanced_mean is None
    assert r.headline == ("overall mean", pytest.approx(expected.mean()))
    r = ev.evaluate(p, g, np.array([1.0, 2.0, 3.0, 4.0]))       # all in the first bin
    assert [b.count for b in r.bins] == [4, 0, 0]
    assert r.balanced_mean is None and r.headline[0] == "overall mean"


def test_failure_rate_is_strictly_greater():
    assert ev.failure_rate([0.07, 0.0700001, 0.01, 0.06], 0.07) == 0.25
    assert ev.failure_rate([0.06, 0.07], 0.06) == 0.5


def test_ced_is_inclusive():
    e = np.array([0.01, 0.02, 0.02, 0.05])
    np.testing.assert_allclose(ev.ced(e, [0.0, 0.01, 0.015, 0.02, 0.05, 1.0]), [0, 0.25, 0.25, 0.75, 1, 1])


# ------------------------------------------------------------------ AUC variants
def test_auc_ls3dw_hand_cases():
    # all zero: c_0 = mean(0 < 0) = 0 (strict), c_1..c_69 = 1
    assert ev.auc_ls3dw(np.zeros(5)) == pytest.approx(69 / 70, abs=1e-15)
    # all 0.0305: c_i = 1 iff i/999 > 0.0305 iff i >= 31 -> i = 31..69: 39 of 70
    assert ev.auc_ls3dw(np.full(3, 0.0305)) == pytest.approx(39 / 70, abs=1e-15)
    # half perfect, half hopeless
    assert ev.auc_ls3dw(np.array([0.0, 1.0])) == pytest.approx(69 * 0.5 / 70, abs=1e-15)
    # generalised threshold: 5% = first 50 bins
    assert ev.auc_ls3dw(np.zeros(2), 0.05) == pytest.approx(49 / 50, abs=1e-15)
    with pytest.raises(EvaluationError):
        ev.auc_ls3dw(np.zeros(2), 0.0001)


def _ls3dw_peer(errors, k=70):
    """Bulat & Tzimiropoulos' calculateMetrics, written out as their loop."""
    axes1 = np.linspace(0, 1, 1000)
    axes2 = np.zeros(1000)
    for i in range(1000):
        axes2[i] = (errors < axes1[i]).sum() / float(errors.shape[0])
    return np.sum(axes2[:k]) / k


def _menpofit_peer(errors, step_error, max_error):
    """menpofit's area_under_curve_and_failure_rate, written out (simps -> simpson)."""
    from scipy.integrate import simpson

    x_axis = list(np.arange(0.0, max_error + step_error, step_error))
    n = len(errors)
    ced = np.array([np.count_nonzero([errors <= x]) / n for x in x_axis])
    return simpson(ced, x=x_axis) / max_error, 1.0 - ced[-1]


@pytest.mark.parametrize("seed", [0, 1])
def test_auc_variants_match_their_reference_code(seed):
    rng = np.random.default_rng(seed)
    e = np.abs(rng.normal(0.035, 0.02, 500))
    e[:7] = [0.0, 0.07, 0.06, 69 / 999, 0.0701, 0.5, 0.03]     # values on the edges
    assert ev.auc_ls3dw(e) == pytest.approx(_ls3dw_peer(e), abs=1e-12)
    assert ev.auc_ls3dw(e, 0.05) == pytest.approx(_ls3dw_peer(e, 50), abs=1e-12)
    for t in (0.07, 0.08, 0.05):
        a, fr = ev.auc_menpofit(e, t)
        pa, pfr = _menpofit_peer(e, 1e-4, t)
        assert a == pytest.approx(pa, abs=1e-12) and fr == pytest.approx(pfr, abs=1e-12)
    r = ev.evaluate(np.zeros((1, 68, 2)), np.zeros((1, 68, 2)) + np.arange(68)[None, :, None] * [1, 2])
    assert r.auc_variant == "ls3dw"


def test_menpofit_axis_quirk_is_reproduced():
    # menpofit builds arange(0, t + step, step): for 7% it ends at 0.0701 (702 samples),
    # so a perfect result integrates to 0.0701 / 0.07; for 8% it ends exactly at 0.08.
    assert len(ev.menpofit_axis(0.07)) == 702
    assert ev.auc_menpofit(np.zeros(4), 0.07)[0] == pytest.approx(0.0701 / 0.07, abs=1e-9)
    assert ev.auc_menpofit(np.zeros(4), 0.08)[0] == pytest.approx(1.0, abs=1e-12)
    # its failure rate is taken at the last axis sample (0.0701), ours exactly at t
    e = np.array([0.07005, 0.01])
    assert ev.auc_menpofit(e, 0.07)[1] == 0.0
    assert ev.failure_rate(e, 0.07) == 0.5
    r = ev.evaluate(np.zeros((1, 68, 2)), np.tile(np.arange(68.0)[:, None], (1, 1, 2)), auc_variant="menpofit")
    assert r.auc_variant == "menpofit" and r.to_dict()["menpofit_step"] == 1e-4


def test_unknown_variant():
    with pytest.raises(EvaluationError, match="unknown AUC variant"):
        ev.auc(np.zeros(3), variant="trapezoid")


# ------------------------------------------------------------------ errors
def test_prediction_errors_say_which_and_how_many(paper_case):
    p, g, yaw, _ = paper_case
    with pytest.raises(PredictionError, match=r"3 images, the ground truth has 4 \(1 missing\)"):
        ev.evaluate(p[:3], g, yaw)
    with pytest.raises(PredictionError, match=r"5 images, the ground truth has 4 \(1 too many\)"):
        ev.evaluate(np.concatenate([p, p[:1]]), g, yaw)
    with pytest.raises(PredictionError, match=r"found \(4, 67, 2\).*not 68 landmarks"):
        ev.evaluate(p[:, :67], g, yaw)
    with pytest.raises(PredictionError, match=r"found \(4, 136\)"):
        ev.evaluate(p.reshape(4, 136), g, yaw)
    bad = p.copy()
    bad[1, 5, 0] = np.nan
    bad[3, 0, 1] = np.inf
    with pytest.raises(PredictionError, match=r"2 of 4 images hold NaN/inf coordinates \(indices 1, 3\)"):
        ev.evaluate(bad, g, yaw)


def test_zero_area_ground_truth_box():
    g = np.zeros((2, 68, 2))
    g[0] = np.random.default_rng(0).uniform(0, 10, (68, 2))
    g[1, :, 0] = np.arange(68)         # a line: zero height
    with pytest.raises(EvaluationError, match=r"1 ground-truth landmark boxes have zero area.*indices 1"):
        ev.nme(g, g)


def test_report_dict_is_json_and_complete(paper_case):
    p, g, yaw, _ = paper_case
    r = ev.evaluate(p, g, yaw, label="x")
    d = json.loads(json.dumps(r.to_dict(per_image=True)))
    for key in ("balanced_mean_nme", "balanced_std_of_bin_means", "overall_mean_nme", "overall_std_nme", "auc",
                "auc_variant", "auc_definition", "failure_rate", "seed_failure_rate", "yaw_bins", "protocol"):
        assert key in d
    assert d["yaw_bins"][2]["upper_deg"] is None
    assert d["per_image"]["nme"] == pytest.approx(r.nme.tolist())
    assert "ddof=0" in d["protocol"]["balanced_std"]
    table = comparison_table([r, ev.evaluate(g, g, yaw, label="perfect")])
    assert "balanced mean" in table and "perfect" in table and "AUC@7% [ls3dw]" in table


# ------------------------------------------------------------------ the real AFLW2000-3D ground truth
@pytest.fixture
def real_gt(aflw_gt_dir):
    pts = np.load(aflw_gt_dir / "AFLW2000-3D.pts68.npy")
    yaw = np.load(aflw_gt_dir / "AFLW2000-3D.pose.npy")
    return pts, yaw


@pytest.mark.reference
def test_real_bin_counts(real_gt):
    pts, yaw = real_gt
    assert pts.shape == (2000, 3, 68)
    assert ev.bin_counts(yaw) == {"[0,30]": 1312, "(30,60]": 383, "(60,inf)": 305}
    over90 = np.abs(yaw) > 90
    assert over90.sum() == 7
    assert np.all(ev.yaw_bin_index(yaw[over90]) == 2)


@pytest.mark.reference
def test_real_nme_matches_a_hand_loop(real_gt):
    pts, yaw = real_gt
    gt = np.swapaxes(pts[:, :2, :].astype(np.float64), 1, 2) - 1.0        # 0-based (2000, 68, 2)
    rng = np.random.default_rng(20261124)
    pred = gt + rng.normal(0, 3.0, gt.shape) + rng.normal(0, 2.0, (2000, 1, 2))
    r = ev.evaluate(pred, gt, yaw)

    # independent, straightforward computation of the protocol
    hand = []
    for i in range(2000):
        xs = [gt[i, k, 0] for k in range(68)]
        ys = [gt[i, k, 1] for k in range(68)]
        d = math.sqrt((max(xs) - min(xs)) * (max(ys) - min(ys)))
        err = sum(math.hypot(pred[i, k, 0] - gt[i, k, 0], pred[i, k, 1] - gt[i, k, 1]) for k in range(68)) / 68
        hand.append(err / d)
    hand = np.array(hand)
    np.testing.assert_allclose(r.nme, hand, rtol=0, atol=1e-6)
    groups = [[], [], []]
    for e, y in zip(hand, yaw):
        a = abs(float(y))
        groups[0 if a <= 30 else 1 if a <= 60 else 2].append(e)
    assert [len(gr) for gr in groups] == [1312, 383, 305]
    means = [sum(gr) / len(gr) for gr in groups]
    for b, m in zip(r.bins, means):
        assert b.mean == pytest.approx(m, abs=1e-6)
    assert r.balanced_mean == pytest.approx(sum(means) / 3, abs=1e-6)
    mu = sum(means) / 3
    assert r.balanced_std == pytest.approx(math.sqrt(sum((m - mu) ** 2 for m in means) / 3), abs=1e-6)
    assert r.overall_mean == pytest.approx(sum(hand) / 2000, abs=1e-6)
    assert r.failure_rate == pytest.approx(sum(e > 0.07 for e in hand) / 2000, abs=0)
    assert r.seed_failure_rate == pytest.approx(sum(e > 0.06 for e in hand) / 2000, abs=0)
    assert r.auc == pytest.approx(_ls3dw_peer(hand), abs=1e-6)


@pytest.mark.reference
def test_real_pixel_convention_matters(real_gt, aflw_gt_dir):
    """The re-annotation is 0-based, pt3d_68 1-based: comparing them without the
    conversion moves the NME, so the convention is part of the protocol."""
    pts, yaw = real_gt
    re = np.load(aflw_gt_dir / "AFLW2000-3D-Reannotated.pts68.npy")
    gt0 = np.swapaxes(pts[:, :2], 1, 2) - 1.0
    gt1 = np.swapaxes(pts[:, :2], 1, 2)
    a = ev.evaluate(re, gt0, yaw)
    b = ev.evaluate(re, gt1, yaw)
    assert abs(a.overall_mean - b.overall_mean) > 5e-4
    # shifting the prediction by (1, 1) is the same as shifting the ground truth by (-1, -1)
    c = ev.evaluate(np.swapaxes(re, 1, 2) + 1.0, gt1, yaw)
    np.testing.assert_allclose(c.nme, a.nme, atol=1e-9)


def test_nme_is_invariant_to_the_crop_similarity(paper_case):
    """A build's crop_affine is scale + translation, so NME in crop pixels equals NME
    in image pixels: a training loop may evaluate on shard landmarks directly."""
    from dhm_data.geometry.crop import apply_affine, crop_affine

    p, g, yaw, expected = paper_case
    for i in range(4):
        A = crop_affine(g[i], 224, 0.3)
        assert ev.nme(apply_affine(A, p[i]), apply_affine(A, g[i])) == pytest.approx(expected[i], abs=1e-12)
    # but not to a change of pixel convention on one side only
    assert ev.nme(p[3] + 1.0, g[3]) == pytest.approx(math.sqrt(2) / 7, abs=1e-12)

import numpy as np
import pytest

from dhm_data.crop import CropError, apply_affine, choose_reduction, affine_for_reduced, crop_affine, invert_affine, landmark_box, warp_crop
from dhm_data.dhm import normalise_coordinates, render_dhm


def test_single_landmark_hand_computed():
    # landmarks at integer and half-integer positions; values hand-computed
    P = np.array([[10.0, 20.0, 0.0], [30.5, 40.0, 5.0], [50.0, 60.0, 10.0]])
    d = render_dhm(P, 64, sigma=1.0)
    # normalised values: x: (10, 30.5, 50) -> 0, 0.5125, 1 ; y: 0, .5, 1 ; z: 0, .5, 1
    np.testing.assert_allclose(d[60, 50], [1.0, 1.0, 1.0], atol=1e-7)
    np.testing.assert_allclose(d[20, 10], [0.0, 0.0, 0.0])
    g = np.exp(-0.25 / 2)  # pixel (30, 40) is 0.5 px from (30.5, 40)
    np.testing.assert_allclose(d[40, 30], g * np.array([20.5 / 40, 0.5, 0.5]), rtol=1e-6)
    np.testing.assert_allclose(d[40, 31], g * np.array([20.5 / 40, 0.5, 0.5]), rtol=1e-6)
    # one pixel diagonally off the third landmark: weight exp(-2/2)
    np.testing.assert_allclose(d[61, 51], np.exp(-1.0) * np.ones(3), rtol=1e-6)
    # truncated at radius 4: nothing beyond
    assert d[60, 55].sum() == 0 and d[60, 54].sum() > 0


def test_overlap_nearest_landmark_wins():
    P = np.array([[10.0, 10.0, 0.0], [12.0, 10.0, 1.0], [40.0, 40.0, 2.0]])
    d = render_dhm(P, 64)
    # pixel (10,10) belongs to landmark 0, (12,10) to landmark 1, (11,10) tie -> lower index 0
    v = normalise_coordinates(P)
    np.testing.assert_allclose(d[10, 10], v[0], atol=1e-7)
    np.testing.assert_allclose(d[10, 12], v[1], atol=1e-7)
    np.testing.assert_allclose(d[10, 11], np.exp(-0.5) * v[0], rtol=1e-6)
    np.testing.assert_allclose(d[10, 13], np.exp(-0.5) * v[1], rtol=1e-6)
    assert d.max() <= 1.0


def test_nan_landmarks_are_skipped_and_degenerate_axis_is_zero():
    P = np.array([[5.0, 5.0, 1.0], [np.nan, np.nan, np.nan], [20.0, 5.0, 1.0]])
    d = render_dhm(P, 32)
    np.testing.assert_allclose(d[5, 20], [1.0, 0.0, 0.0], atol=1e-7)  # y and z have no spread
    assert np.isfinite(d).all()


def test_crop_maps_box_centre_to_crop_centre_and_back():
    rng = np.random.default_rng(3)
    lm = rng.uniform(100, 300, (68, 2))
    A = crop_affine(lm, 224, 0.3)
    box = landmark_box(lm)
    c = apply_affine(A, ((box[:2] + box[2:]) / 2)[None])[0]
    np.testing.assert_allclose(c, [111.5, 111.5], atol=1e-9)
    back = apply_affine(invert_affine(A), apply_affine(A, lm))
    np.testing.assert_allclose(back, lm, atol=1e-9)
    # the longer box side spans 224 / 1.3 crop pixels
    mapped = apply_affine(A, lm)
    span = (mapped.max(0) - mapped.min(0)).max()
    np.testing.assert_allclose(span, 224 / 1.3, rtol=1e-9)


def test_warp_crop_samples_at_the_affine():
    # a source image whose pixel value encodes its column: the crop must read
    # the interpolated column predicted by the inverse affine
    src = np.tile(np.arange(400, dtype=np.float32), (400, 1))[..., None].repeat(3, 2)
    lm = np.array([[100.0, 100.0], [300.0, 260.0]])
    A = crop_affine(lm, 64, 0.2)
    crop = warp_crop(src, A, 64)
    inv = invert_affine(A)
    for i, j in [(0, 0), (10, 33), (63, 63)]:
        x_src = inv[0, 0] * j + inv[0, 1] * i + inv[0, 2]
        assert abs(crop[i, j, 0] - x_src) < 0.05


def test_reduced_decode_affine_composition():
    A = crop_affine(np.array([[0.0, 0.0], [900.0, 900.0]]), 224, 0.0)
    r = choose_reduction(A)
    assert r == 4  # 900 px of face into 224: k ~ 0.249 -> 4x reduction leaves >= 1 px per crop px
    Ar = affine_for_reduced(A, r)
    p_reduced = np.array([[10.0, 20.0]])
    p_source = p_reduced * r + (r - 1) / 2
    np.testing.assert_allclose(apply_affine(Ar, p_reduced), apply_affine(A, p_source))


def test_zero_size_box_raises():
    with pytest.raises(CropError, match="zero width"):
        crop_affine(np.array([[5.0, 1.0], [5.0, 9.0]]), 224, 0.3)
    with pytest.raises(CropError, match="no finite"):
        crop_affine(np.full((68, 2), np.nan), 224, 0.3)

"""Property-based tests (hypothesis) of the conventions and the crop / DHM
geometry over random poses, boxes, crop sizes, margins and sigmas.

* camera: R(pitch, yaw, roll) is a rotation and its angles come back exactly;
  Pose_Para <-> (s, R, t); 0-/1-based shifts; model -> image -> model frame;
* crop: source -> crop -> source is the identity (x, y and the depth scale);
  the box centre lands on (S-1)/2, the longer box side spans S / (1 + margin);
  the reduced-decode affine agrees with the pixel-centre rule; warping a
  smooth blob puts its centroid exactly where the affine maps it (the 0-based
  pixel-centre convention, to a few hundredths of a pixel);
* DHM: every pixel equals a brute-force peer of the documented rule (nearest
  landmark within the truncation window wins, value = Gaussian weight x
  normalised coordinate); each landmark's values peak on its nearest pixel;
  that peak maps back through the inverse crop affine to within half a crop
  pixel of the source landmark.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dhm_data.geometry import camera
from dhm_data.geometry.crop import (
    affine_for_reduced,
    apply_affine,
    crop_affine,
    crop_window,
    invert_affine,
    warp_crop,
)
from dhm_data.prepare.dhm import normalise_coordinates, render_dhm

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DHM_SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

angles = st.floats(-math.pi + 1e-3, math.pi - 1e-3)
yaws = st.floats(-math.pi / 2 + 1e-3, math.pi / 2 - 1e-3)
seeds = st.integers(0, 2**32 - 1)


@pytest.fixture(scope="module")
def mean_landmarks():
    from dhm_data.models.synthetic import load_synthetic_model

    m = load_synthetic_model().landmark_model()
    return m.reconstruct()[:68]


def posed(mean, pitch, yaw, roll, face_px, centre, h):
    """68 landmarks of the mean face posed and projected: (68, 3) 0-based pixels."""
    extent = float(np.ptp(mean[:, 0]))
    s = face_px / extent
    pose = np.array([pitch, yaw, roll, centre[0], h + 1 - centre[1], 0.0, s])
    # translate so that the posed mean centre lands on `centre`
    c = camera.model_to_image(mean, pose, h)[:, :2].mean(0)
    pose[3] += centre[0] - c[0]
    pose[4] -= centre[1] - c[1]
    return camera.model_to_image(mean, pose, h), pose


# ------------------------------------------------------------------ camera conventions
@SETTINGS
@given(pitch=angles, yaw=yaws, roll=angles)
def test_rotation_angles_round_trip(pitch, yaw, roll):
    R = camera.rotation_from_angles(pitch, yaw, roll)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-12)
    # the stated composition Rx(pitch) Ry(yaw) Rz(roll) of transposed elementary rotations
    c, s = np.cos, np.sin
    Rx = np.array([[1, 0, 0], [0, c(pitch), s(pitch)], [0, -s(pitch), c(pitch)]])
    Ry = np.array([[c(yaw), 0, -s(yaw)], [0, 1, 0], [s(yaw), 0, c(yaw)]])
    Rz = np.array([[c(roll), s(roll), 0], [-s(roll), c(roll), 0], [0, 0, 1]])
    np.testing.assert_allclose(R, Rx @ Ry @ Rz, atol=1e-12)
    np.testing.assert_allclose(camera.angles_from_rotation(R), [pitch, yaw, roll], atol=1e-9)


@SETTINGS
@given(pitch=angles, yaw=yaws, roll=angles, t=st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3),
       s=st.floats(1e-5, 10.0))
def test_pose_para_round_trip(pitch, yaw, roll, t, s):
    p = np.array([pitch, yaw, roll, *t, s])
    np.testing.assert_allclose(camera.srt_to_pose_para(*camera.pose_para_to_srt(p)), p, atol=1e-9)
    assert camera.yaw_degrees(p) == pytest.approx(math.degrees(yaw))


@SETTINGS
@given(seed=seeds, pitch=angles, yaw=yaws, roll=angles, h=st.integers(16, 4000))
def test_model_to_image_and_back(seed, pitch, yaw, roll, h):
    rng = np.random.default_rng(seed)
    S = rng.normal(0, 1e4, (20, 3))
    pose = np.r_[pitch, yaw, roll, rng.uniform(0, h, 3), rng.uniform(1e-4, 1e-2)]
    P = camera.model_to_image(S, pose, h)
    np.testing.assert_allclose(camera.image_to_model_frame(P, h), camera.transform_points(S, pose), atol=1e-7)
    # 0-based = 1-based - 1 in x, y only; both directions are inverses
    one = camera.zero_based_to_one_based(P)
    np.testing.assert_allclose(one[:, :2] - P[:, :2], 1.0)
    np.testing.assert_array_equal(one[:, 2], P[:, 2])
    np.testing.assert_allclose(camera.one_based_to_zero_based(one), P, atol=1e-9)


# ------------------------------------------------------------------ crop geometry
@SETTINGS
@given(pitch=st.floats(-0.6, 0.6), yaw=yaws, roll=st.floats(-0.8, 0.8), face=st.floats(20, 600),
       cx=st.floats(-100, 900), cy=st.floats(-100, 900), size=st.integers(8, 512), margin=st.floats(0.0, 1.5))
def test_crop_and_back_is_the_identity(mean_landmarks, pitch, yaw, roll, face, cx, cy, size, margin):
    lm, _ = posed(mean_landmarks, pitch, yaw, roll, face, (cx, cy), 800)
    box_side = float(np.max(np.ptp(lm[:, :2], axis=0)))
    assume(box_side > 1.0)
    A = crop_affine(lm, size, margin)
    crop = apply_affine(A, lm)
    back = apply_affine(invert_affine(A), crop)
    np.testing.assert_allclose(back, lm, atol=1e-7 * max(1.0, face))
    # the window: n = r * round(s / r) source pixels, within r/2 of s, centred
    # within r/2 source pixels of the box centre; r leaves >= 1 source px per crop px
    win = crop_window(lm, size, margin)
    s = (1 + margin) * box_side
    assert win.n % win.r == 0 and win.x0 % win.r == 0 and win.y0 % win.r == 0
    assert abs(win.n - s) <= win.r / 2 + 1e-9 * s and (win.r == 1 or win.n >= win.r * size)
    k = size / win.n
    lo, hi = crop[:, :2].min(0), crop[:, :2].max(0)
    np.testing.assert_allclose((lo + hi) / 2, [(size - 1) / 2] * 2, atol=k * win.r / 2 + 1e-7)
    assert float(np.max(hi - lo)) == pytest.approx(k * box_side, rel=1e-9)
    # every landmark lies inside the crop's pixel area up to the snapping
    assert lo.min() >= -0.5 - k * win.r - 1e-9 and hi.max() <= size - 0.5 + k * win.r + 1e-9
    # depth is scaled by the crop scale (so the DHM z channel is in crop pixels)
    np.testing.assert_allclose(crop[:, 2], lm[:, 2] * k, rtol=1e-9)


@SETTINGS
@given(seed=seeds, size=st.integers(16, 256), margin=st.floats(0.0, 1.0), r=st.sampled_from([1, 2, 4, 8]))
def test_reduced_decode_affine_follows_the_pixel_centre_rule(seed, size, margin, r):
    rng = np.random.default_rng(seed)
    lm = rng.uniform(0, 2000, (68, 2))
    A = crop_affine(lm, size, margin)
    q = rng.uniform(0, 300, (50, 2))              # reduced-image pixels
    src = r * q + (r - 1) / 2                      # their centres in source pixels
    np.testing.assert_allclose(apply_affine(affine_for_reduced(A, r), q), apply_affine(A, src), atol=1e-8)
    # the window's reduction never leaves fewer decoded pixels than crop pixels, and is the largest such
    red = crop_window(lm, size, margin).r
    k = math.sqrt(abs(np.linalg.det(A[:, :2])))
    assert k * red <= 1.0 + 1e-12 or red == 1  # a window of exactly r * size pixels: k r = 1 up to rounding
    s = (1 + margin) * float(np.max(np.ptp(lm, axis=0)))
    assert red == 8 or s < 2 * red * size


@SETTINGS
@given(ux=st.floats(30, 90), uy=st.floats(30, 90), side=st.floats(40, 110), size=st.integers(48, 160),
       dx=st.floats(-5, 5), dy=st.floats(-5, 5))
def test_warp_puts_a_blob_where_the_affine_says(ux, uy, side, size, dx, dy):
    """A smooth Gaussian blob at sub-pixel source point u (pixel centres at
    integers) is warped into the crop; its intensity centroid in the crop is
    A u to a few hundredths of a pixel (a half-pixel convention slip would be
    0.5 px)."""
    H = W = 128
    sigma = 4.0
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = 250.0 * np.exp(-((xx - ux) ** 2 + (yy - uy) ** 2) / (2 * sigma ** 2))
    image = np.repeat(np.round(img)[..., None], 3, axis=2).astype(np.uint8)
    box = np.array([[ux + dx - side / 2, uy + dy - side / 2], [ux + dx + side / 2, uy + dy + side / 2]])
    A = crop_affine(box, size, 0.3)
    k = A[0, 0]
    assume(sigma * k >= 1.2)                       # the blob stays resolved in the crop
    crop = warp_crop(image, A, size).astype(np.float64)[..., 0]
    target = apply_affine(A, np.array([[ux, uy]]))[0]
    assume(np.all(target > 4 * sigma * k) and np.all(target < size - 1 - 4 * sigma * k))
    cy_, cx_ = np.mgrid[0:size, 0:size]
    w = crop.sum()
    centroid = np.array([(crop * cx_).sum() / w, (crop * cy_).sum() / w])
    np.testing.assert_allclose(centroid, target, atol=0.06)


# ------------------------------------------------------------------ DHM
def dhm_reference(P: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Brute-force peer of the documented DHM rule: at each pixel, among the
    landmarks whose truncation window (rint centre +- ceil(4 sigma)) covers it,
    the nearest one (ties: lower index) gives w * v."""
    out = np.zeros((size, size, 3))
    ok = np.all(np.isfinite(P), axis=1)
    if not ok.any():
        return out.astype(np.float32)
    V = normalise_coordinates(P[ok])
    Q = P[ok]
    radius = max(1, math.ceil(4 * sigma))
    yy, xx = np.mgrid[0:size, 0:size]
    best = np.full((size, size), np.inf)
    for l in range(len(Q)):
        cx, cy = np.rint(Q[l, 0]), np.rint(Q[l, 1])
        win = (np.abs(xx - cx) <= radius) & (np.abs(yy - cy) <= radius)
        d2 = (xx - Q[l, 0]) ** 2 + (yy - Q[l, 1]) ** 2
        take = win & (d2 < best)
        best[take] = d2[take]
        out[take] = np.exp(-d2[take] / (2 * sigma ** 2))[:, None] * V[l]
    return out.astype(np.float32)


@DHM_SETTINGS
@given(pitch=st.floats(-0.6, 0.6), yaw=yaws, roll=st.floats(-0.8, 0.8), face=st.floats(30, 400),
       cx=st.floats(0, 450), cy=st.floats(0, 450), size=st.integers(24, 160), margin=st.floats(0.0, 1.0),
       sigma=st.floats(0.5, 2.5))
def test_dhm_equals_the_rule_and_peaks_on_each_landmark(mean_landmarks, pitch, yaw, roll, face, cx, cy, size, margin,
                                                        sigma):
    src, _ = posed(mean_landmarks, pitch, yaw, roll, face, (cx, cy), 450)
    A = crop_affine(src, size, margin)
    P = apply_affine(A, src)
    dhm = render_dhm(P, size, sigma)
    assert dhm.shape == (size, size, 3) and dhm.dtype == np.float32
    assert dhm.min() >= 0 and dhm.max() <= 1
    np.testing.assert_allclose(dhm, dhm_reference(P, size, sigma), atol=1e-6)

    # each landmark's values peak on its own nearest pixel (when it owns that pixel),
    # and that pixel maps back to the source landmark within half a crop pixel
    V = normalise_coordinates(P)
    k = A[0, 0]
    pix = np.rint(P[:, :2]).astype(int)
    d2_all = ((pix[:, None, :] - P[None, :, :2]) ** 2).sum(-1)         # (pixel of l, landmark m)
    for l in range(68):
        px, py = pix[l]
        if not (0 <= px < size and 0 <= py < size):
            continue
        owner = int(np.argmin(d2_all[l]))                                # ties: lowest index, as the rule
        if owner != l:
            continue
        w = math.exp(-d2_all[l, l] / (2 * sigma ** 2))
        np.testing.assert_allclose(dhm[py, px], w * V[l], atol=1e-6)
        j = int(np.argmax(V[l]))
        if V[l, j] > 0:
            r = max(1, math.ceil(4 * sigma))
            lo_x, lo_y = max(px - r, 0), max(py - r, 0)
            window = dhm[lo_y:py + r + 1, lo_x:px + r + 1, j]
            # pixels of the window owned by landmark l carry w(p) * V[l, j] <= the value at its nearest pixel
            wy, wx = np.mgrid[lo_y:lo_y + window.shape[0], lo_x:lo_x + window.shape[1]]
            d2 = ((np.stack([wx, wy], -1)[..., None, :] - P[None, None, :, :2]) ** 2).sum(-1)
            own = np.argmin(d2, axis=-1) == l
            assert window[own].max() == pytest.approx(dhm[py, px, j], abs=1e-7)
        back = apply_affine(invert_affine(A), np.array([[px, py]], np.float64))[0]
        assert np.all(np.abs(back - src[l, :2]) <= 0.5 / k + 1e-9)


@SETTINGS
@given(seed=seeds, size=st.integers(8, 64), sigma=st.floats(0.3, 3.0), n=st.integers(1, 30))
def test_dhm_random_points_with_missing_and_outside(seed, size, sigma, n):
    """Arbitrary points (clustered, outside the crop, NaN rows) still follow the rule."""
    rng = np.random.default_rng(seed)
    P = np.c_[rng.uniform(-10, size + 10, (n, 2)), rng.normal(0, 50, n)]
    P[rng.random(n) < 0.15] = np.nan
    if n > 3:
        P[1, :2] = P[0, :2] + rng.uniform(-0.6, 0.6, 2)                # near-coincident pair
    np.testing.assert_allclose(render_dhm(P, size, sigma), dhm_reference(P, size, sigma), atol=1e-6)


@SETTINGS
@given(seed=seeds, size=st.integers(8, 64), sigma=st.floats(0.3, 3.0), n=st.integers(1, 68), b=st.integers(1, 5),
       grid=st.booleans())
def test_block_renderer_equals_the_single_sample_renderer(seed, size, sigma, n, b, grid):
    """QuantisedDHMBlocks gives each sample of a block exactly
    quantise(render_dhm(...)), with ties, NaN rows, all-NaN samples and
    points outside the crop; its scratch buffers are clean for the next block."""
    from dhm_data.prepare.dhm import QuantisedDHMBlocks
    from dhm_data.shards.schema import quantise

    rng = np.random.default_rng(seed)
    renderer = QuantisedDHMBlocks(size, sigma, group=2)  # blocks of up to 5: groups of 2, 2, 1
    for _ in range(2):                                                 # twice: the buffers were reset
        P = np.concatenate([rng.uniform(-6, size + 6, (b, n, 2)), rng.normal(0, 50, (b, n, 1))], axis=2)
        if grid:
            P[..., :2] = np.round(P[..., :2] * 2) / 2
        if n > 3:
            P[:, 2] = P[:, 1]
            P[rng.random((b, n)) < 0.1] = np.nan
        if b > 2:
            P[1] = np.nan
        out = np.zeros((b, size, size, 3), np.uint8)
        assert renderer.render(P, out) is out
        for k in range(b):
            np.testing.assert_array_equal(out[k], quantise(render_dhm(P[k], size, sigma)), err_msg=f"sample {k}")

import cv2
import numpy as np
import pytest

from dhm_data.errors import CropError
from dhm_data.geometry.crop import (
    CropWindow,
    affine_for_reduced,
    apply_affine,
    crop_affine,
    crop_window,
    extract_crop,
    invert_affine,
    unsnapped_crop_affine,
    warp_crop,
    window_affine,
)
from dhm_data.prepare.dhm import normalise_coordinates, render_dhm


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


def test_crop_window_and_affine_hand_computed():
    # box x 100..300, y 120..280: side s = 1.3 * 200 = 260 (< 2 * 224: no reduction),
    # centre (200, 200); window n = 260 from x0 = floor(200 - 129.5 + 0.5) = 71
    lm = np.array([[100.0, 120.0], [300.0, 280.0], [150.0, 200.0]])
    w = crop_window(lm, 224, 0.3)
    assert w == (71, 71, 260, 1)
    k = 224 / 260
    A = crop_affine(lm, 224, 0.3)
    np.testing.assert_allclose(A, [[k, 0, -k * 70.5 - 0.5], [0, k, -k * 70.5 - 0.5]], rtol=1e-15)
    # window pixel centres 71 and 330 land on the crop's first/last covered positions
    np.testing.assert_allclose(apply_affine(A, np.array([[71.0, 330.0]])), [[k * 0.5 - 0.5, k * 259.5 - 0.5]])
    back = apply_affine(invert_affine(A), apply_affine(A, lm))
    np.testing.assert_allclose(back, lm, atol=1e-9)
    # a 1000-px face: s = 1300 >= 4 * 224 -> r = 4, n = 4 * round(325) = 1300,
    # x0 = 4 * floor((500 - 649.5) / 4 + 0.5) = 4 * floor(-36.875) = -148
    big = np.array([[0.0, 0.0], [1000.0, 1000.0]])
    assert crop_window(big, 224, 0.3) == (-148, -148, 1300, 4)
    assert crop_window(big, 224, 0.3, max_reduction=1) == (-149, -149, 1300, 1)  # floor(-149.5 + 0.5)


def test_extract_crop_equals_the_affine_warp():
    """The resize fast path reads what the general warp reads (to 1 grey level),
    also for windows reaching outside the image, reduced decodes and enlarging."""
    rng = np.random.default_rng(5)
    image = cv2.GaussianBlur(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), (0, 0), 1.5)
    for box in ([[100, 80], [260, 230]], [[-40, 150], [120, 330]], [[330, -30], [470, 90]], [[150, 100], [190, 140]],
                [[0, 0], [399, 299]]):
        for size in (64, 96):
            w = crop_window(np.array(box, float), size, 0.3)
            reduced = image if w.r == 1 else cv2.resize(image, (400 // w.r, 300 // w.r), interpolation=cv2.INTER_AREA)
            want = warp_crop(reduced, affine_for_reduced(window_affine(w, size), w.r), size)
            out = np.full((size, size, 3), 7, np.uint8)
            got = extract_crop(reduced, w, size, out=out)
            assert got is out
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, (box, size, w)
    assert crop_window(np.array([[0, 0], [399, 299]], float), 64, 0.3).r == 8  # the reduced path ran
    # a window wholly outside the image is black
    far = CropWindow(1000, 1000, 128, 1)
    np.testing.assert_array_equal(extract_crop(image, far, 64), 0)


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
    box = np.array([[0.0, 0.0], [900.0, 900.0]])
    r = crop_window(box, 224, 0.0).r
    assert r == 4  # 900 px of face into 224: k ~ 0.249 -> 4x reduction leaves >= 1 px per crop px
    A = crop_affine(box, 224, 0.0)
    Ar = affine_for_reduced(A, r)
    p_reduced = np.array([[10.0, 20.0]])
    p_source = p_reduced * r + (r - 1) / 2
    np.testing.assert_allclose(apply_affine(Ar, p_reduced), apply_affine(A, p_source))


def test_zero_size_box_raises():
    with pytest.raises(CropError, match="zero width"):
        crop_affine(np.array([[5.0, 1.0], [5.0, 9.0]]), 224, 0.3)
    with pytest.raises(CropError, match="no finite"):
        crop_affine(np.full((68, 2), np.nan), 224, 0.3)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
@pytest.mark.parametrize("reduction", [1, 2, 4])
def test_decode_rgb_gives_rgb_order_at_every_reduction(tmp_path, ext, reduction):
    """A red-left / blue-right picture decodes with red in channel 0, at full
    size and with libjpeg's DCT reduction (reduced pixel p = source r p .. r p + r - 1)."""
    from dhm_data.formats.images import decode_rgb

    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:, :32, 0] = 255
    rgb[:, 32:, 2] = 255
    path = tmp_path / f"pic{ext}"
    assert cv2.imwrite(str(path), rgb[..., ::-1].copy())  # OpenCV writes BGR
    img = decode_rgb(path, reduction if ext == ".jpg" else 1)
    r = reduction if ext == ".jpg" else 1
    assert img.shape == (64 // r, 64 // r, 3) and img.dtype == np.uint8
    left, right = img[:, : 8 // r].reshape(-1, 3).mean(0), img[:, -8 // r :].reshape(-1, 3).mean(0)
    assert left[0] > 240 and left[2] < 15 and right[2] > 240 and right[0] < 15


def test_image_size_reads_the_header_only_and_handles_odd_files(tmp_path):
    import os

    from dhm_data.errors import DatasetError
    from dhm_data.formats.images import image_size

    img = np.zeros((37, 53, 3), np.uint8)
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    (tmp_path / "a.jpg").write_bytes(jpg)
    assert image_size(tmp_path / "a.jpg") == (37, 53)
    # two 65,000-byte APP1 segments push the frame header past the first 64 KiB read
    app = b"\xff\xe1" + (65000).to_bytes(2, "big") + bytes(64998)
    (tmp_path / "b.jpg").write_bytes(jpg[:2] + app + app + jpg[2:])
    assert image_size(tmp_path / "b.jpg") == (37, 53)
    assert cv2.imdecode(np.fromfile(tmp_path / "b.jpg", np.uint8), cv2.IMREAD_COLOR).shape == (37, 53, 3)
    (tmp_path / "c.png").write_bytes(cv2.imencode(".png", img)[1].tobytes())
    assert image_size(tmp_path / "c.png") == (37, 53)
    os.mkfifo(tmp_path / "d.jpg")
    with pytest.raises(DatasetError, match=r"d\.jpg: image file is not a regular file"):
        image_size(tmp_path / "d.jpg")  # must not block on the open
    (tmp_path / "e.jpg").mkdir()
    with pytest.raises(DatasetError, match=r"e\.jpg: image file is a directory"):
        image_size(tmp_path / "e.jpg")
    with pytest.raises(DatasetError, match=r"f\.jpg: image file is missing"):
        image_size(tmp_path / "f.jpg")


def test_dhm_near_tie_goes_to_the_nearer_landmark():
    """Two landmarks 2^-16 px apart at a large pixel index: the nearer one
    (index 1) wins its own pixel, in render_dhm and in the block renderer
    (a single combined sort key once rounded the difference away)."""
    from dhm_data.prepare.dhm import QuantisedDHMBlocks
    from dhm_data.shards.schema import quantise

    P = np.array([[220 + 2.0**-16, 220.0, 0.0], [220.0, 220.0, 10.0], [10.0, 10.0, 5.0]])
    dhm = render_dhm(P, 224, 1.0)
    np.testing.assert_allclose(dhm[220, 220], [1.0, 1.0, 1.0], atol=1e-6)   # landmark 1: x, y max, z max, weight 1
    out = QuantisedDHMBlocks(224, 1.0).render(P[None], np.zeros((1, 224, 224, 3), np.uint8))
    np.testing.assert_array_equal(out[0], quantise(dhm))
    np.testing.assert_array_equal(out[0, 220, 220], [255, 255, 255])


def test_unsnapped_affine_centres_the_box_exactly():
    """For points in model units (the mean-shape DHM): no whole-pixel snapping,
    the box centre maps to (size - 1) / 2 and the longer side spans size / 1.3."""
    pts = np.array([[-0.31, -0.52], [0.29, 0.44], [0.0, 0.1]])  # e.g. a normalised mean shape
    A = unsnapped_crop_affine(pts, 224, 0.3)
    c = apply_affine(A, np.array([[-0.01, -0.04]]))[0]          # the box centre
    np.testing.assert_allclose(c, [111.5, 111.5], atol=1e-9)
    mapped = apply_affine(A, pts)
    np.testing.assert_allclose(np.ptp(mapped, axis=0).max(), 224 / 1.3, rtol=1e-12)

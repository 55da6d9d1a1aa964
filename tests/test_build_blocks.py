"""The block-structured prepare stage: same shards whatever the processes."""

from __future__ import annotations

import json

import numpy as np
from conftest import assert_same_contents, reference_path, shard_contents

from dhm_data.build.flow import BuildRequest, run_build


def test_one_shard_helped_by_workers_equals_one_process(synthetic_tree, tmp_path):
    """A build with fewer shards than processes (one shard here, written by
    the main process while a worker prepares its blocks) gives the shard a
    one-process build gives, and the same summary counts."""
    root = synthetic_tree("aflw2000", 80)  # one shard of 80: 3 blocks of labels and of pixels
    overrides = {"shards.size": 1000}
    s1 = run_build(BuildRequest("aflw2000", root, tmp_path / "j1", jobs=1, progress=False, overrides=overrides),
                   echo=lambda m: None)
    s2 = run_build(BuildRequest("aflw2000", root, tmp_path / "j2", jobs=2, progress=False, overrides=overrides),
                   echo=lambda m: None)
    assert len(s1["shards"]) == 1
    assert s1["written"] == s2["written"] and s1["rejected"] == s2["rejected"]
    assert s1["label_sources"] == s2["label_sources"] and s1["warnings"] == s2["warnings"]
    assert_same_contents(shard_contents(tmp_path / "j1"), shard_contents(tmp_path / "j2"))
    # the unit record lists every input with the same state (its hash taken by the workers and this process)
    rec1, rec2 = (json.loads(next((tmp_path / j / ".records" / "prepare").rglob("*.json")).read_text())
                  for j in ("j1", "j2"))
    assert len(rec1["inputs"]) == 2 * 80 and rec1["inputs"] == rec2["inputs"]
    assert all(len(state) == 3 and len(state[2]) == 32 for state in rec2["inputs"].values())


def test_bgr_decode_then_rgb_crop_equals_rgb_decode_then_crop():
    """The build decodes BGR and swaps the crop: bit-equal to cropping the RGB image."""
    import cv2

    from dhm_data.formats.images import decode_checked, decode_rgb
    from dhm_data.geometry.crop import CropWindow, extract_crop

    path = reference_path("aflw2000-3d-samples", "image00050.jpg")
    rgb = decode_rgb(path)
    bgr, said = decode_checked(path, 1, rgb=False)
    assert said == []
    np.testing.assert_array_equal(bgr[..., ::-1], rgb)
    for w in (CropWindow(100, 80, 300, 1), CropWindow(-40, -30, 150, 1)):  # downscale; upscale at the border
        a = extract_crop(rgb, w, 224)
        b = extract_crop(bgr, w, 224)
        cv2.cvtColor(b, cv2.COLOR_BGR2RGB, dst=b)
        np.testing.assert_array_equal(a, b)


def test_prepare_rows_equals_apply_affine_sample_by_sample():
    from dhm_data.datasets.base import Sample
    from dhm_data.geometry.crop import apply_affine
    from dhm_data.prepare.row import prepare_rows

    rng = np.random.default_rng(0)
    samples, affines, lm3 = [], [], []
    for i in range(5):
        samples.append(Sample(name=f"s{i}", subset="x", image_path=None, landmarks_2d=rng.uniform(0, 400, (68, 2)),
                              pose_para=rng.normal(size=7), shape_para=np.zeros(3), exp_para=np.zeros(2),
                              image_size=(450, 450)))
        k = rng.uniform(0.4, 2.0)
        affines.append(np.array([[k, 0.0, rng.uniform(-90, 9)], [0.0, k, rng.uniform(-90, 9)]]))
        lm3.append(rng.uniform(0, 400, (68, 3)))
    rows = prepare_rows(samples, affines, lm3, ["label"] * 5, [np.nan] * 5, [True] * 5)
    for s, A, p, r in zip(samples, affines, lm3, rows):
        np.testing.assert_array_equal(r["landmarks_2d"], apply_affine(A, s.landmarks_2d).astype(np.float32))
        np.testing.assert_array_equal(r["landmarks_3d"], apply_affine(A, p).astype(np.float32))
        assert r["yaw"] == np.float32(np.degrees(s.pose_para[1]))

"""Resumability: SIGKILL at random points, rerun, same contents."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import assert_same_contents, shard_contents


def _cmd(root, out, *extra):
    return [sys.executable, "-m", "dhm_data", "build", "300wlp", "--root", str(root), "--out", str(out),
            "--shard-size", "8", "--quiet", *extra]


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_equals_uninterrupted(tmp_path, synthetic_tree):
    root = synthetic_tree("300wlp", 40)
    ref = tmp_path / "reference"
    t0 = time.perf_counter()
    subprocess.run(_cmd(root, ref, "--jobs", "2"), check=True, capture_output=True)
    duration = time.perf_counter() - t0
    expected = shard_contents(ref)
    assert len(expected) >= 10

    rng = np.random.default_rng(1234)
    out = tmp_path / "killed"
    kills = 0
    # kill points spread over the run (interpreter start-up included), the
    # earliest first so that several runs are cut while work remains
    for delay in np.sort(rng.uniform(0.2, 0.9, size=5)) * duration:
        p = subprocess.Popen(_cmd(root, out, "--jobs", "2"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        time.sleep(delay)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # the main process and its workers
            kills += 1
        p.wait()
        # nothing half-written is ever visible under a final name
        for h5 in out.glob("*/shard-*.h5"):
            assert not h5.name.startswith(".")
    r = subprocess.run(_cmd(root, out), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert kills >= 1
    assert_same_contents(shard_contents(out), expected)
    # leftovers of killed runs are only dot-files (temporary names), never shards
    assert not [p for p in out.rglob("shard-*.h5") if p.parent.name.startswith(".")]


def test_rerun_skips_finished_units_and_redoes_changed_ones(tmp_path, synthetic_tree):
    from dhm_data.build.flow import BuildRequest, run_build

    root = synthetic_tree("300wlp", 12)
    out = tmp_path / "b"
    req = BuildRequest("300wlp", root, out, None, progress=False, overrides={"shards.size": 6})
    run_build(req, echo=lambda m: None)
    shards = sorted(out.glob("*/shard-*.h5"))
    mtimes = {p: p.stat().st_mtime_ns for p in shards}
    run_build(req, echo=lambda m: None)
    assert {p: p.stat().st_mtime_ns for p in shards} == mtimes  # nothing redone
    req = dataclasses.replace(req, overrides={"shards.size": 6, "dhm.sigma": 1.5})  # requests are frozen
    run_build(req, echo=lambda m: None)
    assert all(p.stat().st_mtime_ns != mtimes[p] for p in shards)  # parameter change redoes all


def test_mean_dhm_follows_the_settings(tmp_path, synthetic_tree):
    from dhm_data.build.flow import BuildRequest, run_build

    root = synthetic_tree("aflw2000", 8)
    req = BuildRequest("aflw2000", root, tmp_path / "b", None, progress=False)
    run_build(req, echo=lambda m: None)
    a = np.load(tmp_path / "b" / "mean_dhm.npy")
    assert a.shape == (224, 224, 3) and a.dtype == np.float32 and 0.9 < a.max() <= 1.0
    req = dataclasses.replace(req, overrides={"crop.size": 128})
    run_build(req, echo=lambda m: None)
    assert np.load(tmp_path / "b" / "mean_dhm.npy").shape == (128, 128, 3)
    assert not list((tmp_path / "b").glob(".mean_dhm*"))


def test_a_rebuild_with_fewer_shards_leaves_only_the_planned_ones(tmp_path, synthetic_tree):
    from dhm_data.build.flow import BuildRequest, run_build
    from dhm_data.load import ShardDataset

    root = synthetic_tree("aflw2000", 8)
    out = tmp_path / "b"
    run_build(BuildRequest("aflw2000", root, out, None, progress=False, overrides={"shards.size": 2}), echo=lambda m: None)
    assert len(list((out / "test").glob("shard-*.h5"))) == 4
    run_build(BuildRequest("aflw2000", root, out, None, progress=False), echo=lambda m: None)
    assert [p.name for p in (out / "test").glob("shard-*.h5")] == ["shard-00000.h5"]
    assert len(ShardDataset(out / "test")) == 8
    assert sorted(p.name for p in (out / ".records" / "prepare" / "test").iterdir()) == ["shard-00000.json"]


def test_changed_3d_estimates_refit(tmp_path, synthetic_tree):

    from dhm_data.build.flow import BuildRequest, run_fit

    root = synthetic_tree("ls3dw", 30)
    z = np.load(root / "LS3D-W" / "synthetic_landmarks_3d.npz")
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, names=z["names"], landmarks_3d=z["landmarks_3d"])
    l3 = z["landmarks_3d"].copy()
    l3[:, 10:, 2] += 300.0                       # only depths far into each array change
    np.savez(b, names=z["names"], landmarks_3d=l3)
    out = tmp_path / "fit"
    run_fit(BuildRequest("ls3dw", root, out, None, progress=False, landmarks_3d=a), echo=lambda m: None)
    fits = sorted((out / "fits").rglob("shard-*.npz"))
    before = [p.read_bytes() for p in fits]
    run_fit(BuildRequest("ls3dw", root, out, None, progress=False, landmarks_3d=b), echo=lambda m: None)
    assert [p.read_bytes() for p in fits] != before

"""Distributed builds: the same shard units on a dask.distributed cluster (and on
Ray where it is installed) give the same shards as a local build, and a unit
whose worker is lost is simply run again."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from conftest import assert_same_contents, shard_contents
from test_faults import SITECUSTOMIZE

pytest.importorskip("dask.distributed", reason="dask[distributed] is in the [test] extra")


def _build(root, out, pipeline="300wlp", **kw):
    from dhm_data.build.flow import BuildRequest, run_build

    req = BuildRequest(pipeline, root, out, None, progress=False, overrides={"shards.size": 8}, **kw)
    return run_build(req, echo=lambda m: None)


@pytest.fixture(scope="module")
def tree(synthetic_tree):
    return synthetic_tree("300wlp", 20)     # 40 images: 5 train shards + 1 val shard


@pytest.fixture(scope="module")
def local(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "b"
    summary = _build(tree, out)
    return out, summary, shard_contents(out)


def _same_summary(a: dict, b: dict) -> None:
    for key in ("written", "rejected", "shards", "label_sources", "scanned", "pipeline"):
        assert a[key] == b[key], key


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local dask.distributed cluster of 2 single-threaded worker processes.

    The workers get the fault-injection ``sitecustomize`` (see test_faults.py)
    with a 0.4 s delay per unit, so that a worker can be killed mid-stage."""
    from dask.distributed import LocalCluster

    d = tmp_path_factory.mktemp("inject")
    (d / "sitecustomize.py").write_text(SITECUSTOMIZE)
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "DHM_FAULT_DELAY")}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(d)] + [p for p in [saved["PYTHONPATH"]] if p])
    os.environ["DHM_FAULT_DELAY"] = "0.4"
    try:
        c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                         silence_logs=50)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield c
    c.close()


def test_dask_cluster_build_equals_local_build(cluster, tree, local, tmp_path):
    ref_dir, ref_summary, expected = local
    out = tmp_path / "b"
    summary = _build(tree, out, backend="dask", scheduler=cluster.scheduler_address, jobs=2)
    _same_summary(summary, ref_summary)
    assert_same_contents(shard_contents(out), expected)
    # every unit was recorded by the main process; a rerun on the cluster does nothing
    recs = sorted((out / ".records" / "prepare").rglob("*.json"))
    assert len(recs) == len(summary["shards"]) == 6
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/shard-*.h5")}
    _build(tree, out, backend="dask", scheduler=cluster.scheduler_address, jobs=2)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/shard-*.h5")} == mtimes


def test_dask_unit_on_a_lost_worker_runs_again(cluster, tree, local, tmp_path):
    """SIGKILL one dask worker process while it runs a unit: the scheduler
    gives the unit to another worker (the nanny restarts the dead one), the
    unit's output is written once, under its final name, and the build equals
    the local one."""
    from dask.distributed import Client

    ref_dir, ref_summary, expected = local
    out = tmp_path / "b"
    with Client(cluster.scheduler_address) as client:
        pids = [p for p in client.run(os.getpid).values()]
    assert len(pids) == 2
    killed = []

    def killer():
        t0 = time.monotonic()
        rec = out / ".records" / "prepare"
        while time.monotonic() - t0 < 60:
            if rec.is_dir() and len(list(rec.rglob("*.json"))) >= 1:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(len(list(rec.rglob("*.json"))))
                return
            time.sleep(0.01)

    th = threading.Thread(target=killer)
    th.start()
    try:
        summary = _build(tree, out, backend="dask", scheduler=cluster.scheduler_address, jobs=2)
    finally:
        th.join()
    assert killed and killed[0] < 6, "the worker was not killed mid-stage"
    _same_summary(summary, ref_summary)
    assert_same_contents(shard_contents(out), expected)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name and not p.name.startswith(".")]
    # the cluster is whole again for the next test
    with Client(cluster.scheduler_address) as client:
        client.wait_for_workers(2, timeout=30)


def test_dask_fit_stage_on_the_cluster(cluster, synthetic_tree, tmp_path):
    """The fit stage (LS3D-W) runs its units on the cluster too: same fits and shards."""
    root = synthetic_tree("ls3dw", 16)
    a = _build(root, tmp_path / "local", pipeline="ls3dw")
    b = _build(root, tmp_path / "dask", pipeline="ls3dw", backend="dask", scheduler=cluster.scheduler_address,
               jobs=2)
    _same_summary(a, b)
    drop = ("flagged_list",)   # a path inside each build folder
    assert {k: v for k, v in a["fit"].items() if k not in drop} == {k: v for k, v in b["fit"].items() if k not in drop}
    assert_same_contents(shard_contents(tmp_path / "dask"), shard_contents(tmp_path / "local"))


def test_dask_without_scheduler_starts_a_local_cluster(tree, local, tmp_path):
    """`--backend dask` without `--scheduler`: a LocalCluster of --jobs workers."""
    _, ref_summary, expected = local
    out = tmp_path / "b"
    from click.testing import CliRunner

    from dhm_data.cli import main

    r = CliRunner().invoke(main, ["build", "300wlp", "--root", str(tree), "--out", str(out), "--shard-size", "8",
                                  "--backend", "dask", "--jobs", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    _same_summary(json.loads((out / "build.json").read_text()), ref_summary)
    assert_same_contents(shard_contents(out), expected)


def test_ray_build_equals_local_build(tree, local, tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (too large for the [test] extra); "
                                      "pip install 'ray[default]' to run this test")
    _, ref_summary, expected = local
    out = tmp_path / "b"
    summary = _build(tree, out, backend="ray", jobs=2)
    _same_summary(summary, ref_summary)
    assert_same_contents(shard_contents(out), expected)

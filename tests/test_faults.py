"""Fault injection: no failure may lose or corrupt data.

Faults are injected into real ``dhm-data build`` subprocesses through a
``sitecustomize.py`` put on their ``PYTHONPATH`` (forked worker processes
inherit what it patched; loky's fresh ones inherit the environment):

* ``DHM_FAULT_DELAY=s``: every prepare / fit unit sleeps ``s`` seconds first,
  so that a kill lands while a stage is half done (deterministically, not by
  timing luck);
* ``DHM_FAULT_ENOSPC=text``: ``os.fsync`` of any file whose path contains
  ``text`` raises ``OSError(ENOSPC)``, the way a full disk surfaces when the
  written pages are flushed.

Already covered elsewhere (not repeated): SIGKILL of the whole process group
at random points of the prepare stage (test_build_resume.py), the lock refusing
a second holder (test_runner.py), ``verify`` on a flipped byte (test_cli.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_contents, shard_contents

SITECUSTOMIZE = textwrap.dedent('''
    import os

    _delay = float(os.environ.get("DHM_FAULT_DELAY") or 0)
    _enospc = os.environ.get("DHM_FAULT_ENOSPC")
    if _delay:
        import time

        import dhm_data.build.fit_stage as _f
        import dhm_data.build.prepare_stage as _b

        def _slow(fn):
            def unit(payload):
                time.sleep(_delay)
                return fn(payload)
            unit.__module__, unit.__name__, unit.__qualname__ = fn.__module__, fn.__name__, fn.__qualname__
            return unit

        _b.prepare_shard = _slow(_b.prepare_shard)
        _f.fit_shard = _slow(_f.fit_shard)
    if _enospc:
        import errno

        _real_fsync = os.fsync

        def fsync(fd):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if _enospc in target:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return _real_fsync(fd)

        os.fsync = fsync
''')


@pytest.fixture(scope="module")
def inject(tmp_path_factory):
    d = tmp_path_factory.mktemp("inject")
    (d / "sitecustomize.py").write_text(SITECUSTOMIZE)

    def env(**faults):
        e = dict(os.environ)
        e["PYTHONPATH"] = os.pathsep.join([str(d)] + [p for p in [e.get("PYTHONPATH")] if p])
        e.pop("DHM_FAULT_DELAY", None)
        e.pop("DHM_FAULT_ENOSPC", None)
        e.update({f"DHM_FAULT_{k.upper()}": str(v) for k, v in faults.items()})
        return e

    return env


def build_cmd(pipeline, root, out, *extra):
    return [sys.executable, "-m", "dhm_data", "build", pipeline, "--root", str(root), "--out", str(out),
            "--shard-size", "8", "--quiet", *extra]


@pytest.fixture(scope="module")
def lp_tree(synthetic_tree):
    return synthetic_tree("300wlp", 24)          # 48 images -> 6 train shards + 1 val shard


@pytest.fixture(scope="module")
def ls_tree(synthetic_tree):
    return synthetic_tree("ls3dw", 40)           # 5 fit units, 5 prepare units


@pytest.fixture(scope="module")
def references(tmp_path_factory, lp_tree, ls_tree):
    """Uninterrupted builds, {pipeline: (folder, contents)}."""
    out = {}
    for pipeline, root in (("300wlp", lp_tree), ("ls3dw", ls_tree)):
        d = tmp_path_factory.mktemp(f"ref-{pipeline}")
        subprocess.run(build_cmd(pipeline, root, d / "b", "--jobs", "2"), check=True, capture_output=True)
        out[pipeline] = (d / "b", shard_contents(d / "b"))
    return out


# ------------------------------------------------------------------ process helpers
def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the direct children of ``pid``, from /proc."""
    out = []
    for st in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = st.read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                cmd = (st.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out.append((int(st.parent.name), cmd))
        except (OSError, ValueError, IndexError):
            continue
    return out


def pool_workers(pid: int) -> list[int]:
    """The build's worker processes: forked children (their command line is
    the build's own) or, where workers cannot be forked, loky's."""
    own = (Path(f"/proc/{pid}/cmdline")).read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return [c for c, cmd in children(pid) if cmd == own or "LokyProcess" in cmd]


def records(out: Path, stage: str) -> list[Path]:
    return sorted((out / ".records" / stage).rglob("*.json"))


def wait_until(cond, proc, timeout=60.0, what=""):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = cond()
        if v:
            return v
        if proc.poll() is not None:
            raise AssertionError(f"the build ended (code {proc.returncode}) before {what}: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def no_visible_partial_output(out: Path) -> None:
    """Every file under a final name is complete: each shard and fit file
    opens and (shards) passes verification; temporary files are dot-files."""
    from dhm_data.fit.result_file import read_fits
    from dhm_data.shards import verify_shard

    for p in out.rglob("*"):
        if p.is_file() and not p.name.startswith(".") and ".tmp-" in p.name:
            raise AssertionError(f"temporary file under a visible name: {p}")
    for p in out.glob("*/shard-*.h5"):
        verify_shard(p)
    for p in out.glob("fits/*/shard-*.npz"):
        read_fits(p)


# ------------------------------------------------------------------ SIGKILL during a stage
@pytest.mark.slow
@pytest.mark.parametrize("pipeline,stage,victim", [
    ("300wlp", "prepare", "worker"),
    ("ls3dw", "fit", "worker"),
    ("ls3dw", "fit", "main"),
])
def test_sigkill_mid_stage_then_rerun_equals_uninterrupted(pipeline, stage, victim, tmp_path, inject, references,
                                                           lp_tree, ls_tree):
    """Kill one worker process (or the main process with its workers) once some
    units of ``stage`` are recorded and others are running: the run stops with
    a clear error (worker) or dies (main); nothing half-written is visible; a
    rerun redoes only the unfinished units and equals an uninterrupted build."""
    root = lp_tree if pipeline == "300wlp" else ls_tree
    ref_dir, expected = references[pipeline]
    out = tmp_path / "b"
    p = subprocess.Popen(build_cmd(pipeline, root, out, "--jobs", "2"), env=inject(delay=0.5),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_until(lambda: len(records(out, stage)) >= 2, p, what=f"two {stage} units were recorded")
        workers = wait_until(lambda: pool_workers(p.pid), p, what="the worker processes")
        n_units = len(records(ref_dir, stage))
        assert len(records(out, stage)) < n_units, "the stage finished before the kill"
        if victim == "worker":
            os.kill(workers[0], signal.SIGKILL)
        else:
            os.killpg(p.pid, signal.SIGKILL)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode != 0
    if victim == "worker":
        # the main process survives and says what happened and what to do
        assert f"stage {stage}: the parallel run stopped" in err, err
        assert f"worker pid {workers[0]} killed by SIGKILL" in err, err
        assert "rerun the same command to resume" in err, err
        assert "unfinished (first: " in err
    no_visible_partial_output(out)

    kept = {}
    for rec in records(out, stage):
        unit = rec.relative_to(out / ".records" / stage).with_suffix("")
        target = out / (f"fits/{unit}.npz" if stage == "fit" else f"{unit}.h5")
        kept[target] = target.stat().st_mtime_ns
    assert kept
    r = subprocess.run(build_cmd(pipeline, root, out), env=inject(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert_same_contents(shard_contents(out), expected)
    # units recorded before the kill were not redone
    assert {t: t.stat().st_mtime_ns for t in kept} == kept
    assert len(records(out, stage)) == len(records(ref_dir, stage))


# ------------------------------------------------------------------ full disk
@pytest.mark.slow
@pytest.mark.parametrize("where,jobs", [
    ("train/.shard-00002.h5", 2),                      # a worker writing a shard
    ("train/.shard-00003.h5", 1),                      # in-process (jobs 1) writing a shard
    (".records/prepare/train/.shard-00001.json", 2),   # the main process writing a unit record
])
def test_disk_full_gives_a_clear_error_and_a_rerun_completes(where, jobs, tmp_path, inject, references, lp_tree):
    ref_dir, expected = references["300wlp"]
    out = tmp_path / "b"
    r = subprocess.run(build_cmd("300wlp", lp_tree, out, "--jobs", str(jobs)), env=inject(enospc=where),
                       capture_output=True, text=True)
    assert r.returncode != 0
    unit = "train/" + Path(where).name.lstrip(".").split(".")[0]
    assert f"stage prepare, unit {unit}" in r.stderr, r.stderr
    assert "No space left on device" in r.stderr and "rerun the same command to resume" in r.stderr
    if "records" in where:
        assert "could not be written" in r.stderr
    else:
        # the shard being written when the disk filled is not visible, nor is its temporary file
        assert not (out / f"{unit}.h5").exists()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name], "temporary files left behind"
    no_visible_partial_output(out)
    assert not (out / "build.json").exists()   # the build is not reported finished
    # space freed: the same command finishes the build
    r = subprocess.run(build_cmd("300wlp", lp_tree, out, "--jobs", str(jobs)), env=inject(), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert_same_contents(shard_contents(out), expected)


# ------------------------------------------------------------------ damaged shards after the build
@pytest.fixture
def built(tmp_path, references):
    """A copy of the finished 300W-LP reference build (shutil.copytree keeps
    the mtimes the records were written with)."""
    src, expected = references["300wlp"]
    dst = tmp_path / "b"
    shutil.copytree(src, dst)
    return dst, expected


def _dhm_chunk_offset(path: Path, sample: int) -> int:
    import h5py
    import hdf5plugin  # noqa: F401

    with h5py.File(path, "r") as h:
        return h["dhm"].id.get_chunk_info(sample).byte_offset


def _damage(path: Path, how: str) -> str | None:
    """Damage ``path``; return the name of the damaged sample (None: whole file)."""
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) * 2 // 3]))
        return None
    i = 3
    data[_dhm_chunk_offset(path, i) + 40] ^= 0x5A       # inside sample 3's compressed DHM
    path.write_bytes(bytes(data))
    from dhm_data.shards import ShardReader

    with ShardReader(path) as r:
        return str(r.read("name", [i])[0])


@pytest.mark.parametrize("how", ["truncated", "bit-flipped"])
def test_damaged_shard_is_caught_named_and_only_it_is_rebuilt(how, built, lp_tree, inject):
    from click.testing import CliRunner

    from dhm_data.cli import main
    from dhm_data.errors import ShardError
    from dhm_data.load import Loader, ShardDataset

    out, expected = built
    shards = sorted(out.glob("*/shard-*.h5"))
    victim = out / "train" / "shard-00002.h5"
    mtimes = {p: p.stat().st_mtime_ns for p in shards}
    sample = _damage(victim, how)

    r = CliRunner().invoke(main, ["verify", str(out)])
    assert r.exit_code != 0 and str(victim) in r.output
    if sample is not None:
        assert f"field 'dhm': damaged samples 3 {sample!r}" in r.output
    else:
        assert "truncated" in r.output

    with pytest.raises(ShardError) as e:
        ds = ShardDataset(out / "train", fields=["image", "dhm", "landmarks_2d"])
        for _ in Loader(ds, batch_size=4, shuffle=False):
            pass
    msg = str(e.value)
    assert str(victim) in msg
    if sample is not None:
        assert "field 'dhm': sample 3" in msg and "dhm-data verify" in msg
    else:
        assert "truncated" in msg

    # the rerun sees that the shard no longer matches its record and rebuilds it, and only it
    r = subprocess.run(build_cmd("300wlp", lp_tree, out), env=inject(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for p in shards:
        if p == victim:
            assert p.stat().st_mtime_ns != mtimes[p]
        else:
            assert p.stat().st_mtime_ns == mtimes[p], p
    assert CliRunner().invoke(main, ["verify", str(out)]).exit_code == 0
    assert_same_contents(shard_contents(out), expected)


@pytest.mark.parametrize("where", ["image byte", "dhm chunk header"])
def test_loader_names_file_and_sample_for_any_damaged_sample(where, built):
    import h5py

    from dhm_data.errors import ShardError
    from dhm_data.load import ShardDataset

    out, _ = built
    victim = out / "train" / "shard-00002.h5"
    data = bytearray(victim.read_bytes())
    if where == "image byte":
        with h5py.File(victim, "r") as h:
            off = h["image"].id.get_offset() + 3 * int(np.prod(h["image"].shape[1:])) + 1000
        data[off] ^= 0x5A
    else:
        # The Blosc header's compressed size (bytes 12-15) made too small to
        # hold the data: undecodable whatever the chunk holds (flipping one of
        # its bits can leave a larger size that Blosc reads past harmlessly).
        off = _dhm_chunk_offset(victim, 3) + 12
        data[off:off + 4] = (16).to_bytes(4, "little")
    victim.write_bytes(bytes(data))
    # a flipped crop byte decodes fine: only the per-sample CRC32 check sees it
    ds = ShardDataset(victim, fields=["image", "dhm"], check_crc=(where == "image byte"))
    with pytest.raises(ShardError, match=r"shard-00002\.h5.*sample 3"):
        ds.read_batch(np.arange(len(ds)))


# ------------------------------------------------------------------ two builds on one folder
@pytest.mark.slow
def test_two_builds_started_on_one_folder(tmp_path, inject, references, lp_tree):
    """Two `dhm-data build` commands on one --out at once: one is refused with a
    message naming the other's pid, the other finishes; the result equals an
    uninterrupted build, and the refused command, rerun, finds everything done."""
    _, expected = references["300wlp"]
    out = tmp_path / "b"
    procs = [subprocess.Popen(build_cmd("300wlp", lp_tree, out, "--jobs", "2"), env=inject(delay=0.2),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    res = [(p.pid, *p.communicate(timeout=120), p.returncode) for p in procs]
    ok = [r for r in res if r[3] == 0]
    refused = [r for r in res if r[3] != 0]
    assert len(ok) == 1 and len(refused) == 1, res
    assert f"another build (pid {ok[0][0]}) is writing this directory" in refused[0][2]
    assert_same_contents(shard_contents(out), expected)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/shard-*.h5")}
    r = subprocess.run(build_cmd("300wlp", lp_tree, out), env=inject(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/shard-*.h5")} == mtimes

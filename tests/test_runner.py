import json
import multiprocessing as mp

import pytest

from dhm_data import atomic
from dhm_data.build.layout import BuildLayout
from dhm_data.build.runner import BuildLock, Unit, fingerprint, run_units
from dhm_data.errors import BuildLockedError


def _work(payload):
    out, value = payload
    atomic.write_bytes(out, value.encode())
    return {"value": value}


def test_units_are_skipped_when_done_and_redone_when_changed(tmp_path):
    layout = BuildLayout(tmp_path)
    calls = []

    def work(p):
        calls.append(p[1])
        return _work(p)

    units = [Unit("s", f"u{i}", fingerprint({"v": i}), [tmp_path / f"o{i}"], (tmp_path / f"o{i}", f"v{i}"), n=1) for i in range(3)]
    run_units(layout, units, work, progress=False)
    assert calls == ["v0", "v1", "v2"]
    run_units(layout, units, work, progress=False)
    assert calls == ["v0", "v1", "v2"]          # all skipped
    units[1] = Unit("s", "u1", fingerprint({"v": 10}), [tmp_path / "o1"], (tmp_path / "o1", "v10"), n=1)
    (tmp_path / "o2").write_bytes(b"truncated")  # an output altered after its record
    res = run_units(layout, units, work, progress=False)
    assert calls[3:] == ["v10", "v2"]
    assert res["u0"] == {"value": "v0"} and (tmp_path / "o1").read_text() == "v10"


def test_progress_bar_counts_samples_and_quiet_draws_nothing(tmp_path, capsys):
    units = [Unit("s", f"u{i}", fingerprint({"v": i}), [tmp_path / f"o{i}"], (tmp_path / f"o{i}", f"v{i}"), n=7)
             for i in range(3)]
    run_units(BuildLayout(tmp_path / "quiet"), units, _work, progress=False, desc="quiet run")
    assert capsys.readouterr().err == ""
    units = [Unit("s", f"u{i}", fingerprint({"v": i}), [tmp_path / f"p{i}"], (tmp_path / f"p{i}", f"v{i}"), n=7)
             for i in range(3)]
    run_units(BuildLayout(tmp_path / "shown"), units, _work, progress=True, desc="shown run")
    err = capsys.readouterr().err
    assert "shown run" in err and "21/21" in err and "sample" in err


def test_fingerprint_is_params_paths_and_arrays():
    import hashlib
    import json

    import numpy as np

    assert fingerprint({"x": 1}, ["a"]) != fingerprint({"x": 2}, ["a"])
    assert fingerprint({}, ["a"]) != fingerprint({}, ["b"])
    a = np.arange(6.0).reshape(2, 3)
    h = hashlib.sha256(json.dumps({"k": 1}).encode())
    h.update(b"(2, 3)" + a.tobytes())  # hand-computed: shape, then bytes
    assert fingerprint({"k": 1}, arrays=[a, None]) == h.hexdigest()


def _unit(tmp_path, inp, value="v"):
    out = tmp_path / "out.bin"
    return Unit("s", "u", fingerprint({"v": value}, [inp]), [out], (out, value), n=1, inputs=(inp,))


def test_done_means_same_content_whatever_the_mtimes(tmp_path):
    import os

    from dhm_data.build.runner import is_done

    layout = BuildLayout(tmp_path)
    inp = tmp_path / "in.txt"
    inp.write_text("abc")
    calls = []

    def work(p):
        calls.append(p[1])
        return _work(p)

    u = _unit(tmp_path, inp)
    run_units(layout, [u], work, progress=False)
    assert is_done(layout, u) and calls == ["v"]
    for p in (inp, tmp_path / "out.bin"):  # a copy: new modification times, same bytes
        os.utime(p, ns=(1, 10**18))
    assert is_done(layout, u)               # status says done ...
    run_units(layout, [u], work, progress=False)
    assert calls == ["v"]                   # ... and the build agrees
    rec = json.loads(layout.record("s", "u").read_text())
    assert rec["inputs"][str(inp)][1] == 10**18   # the record follows the new times
    inp.write_text("abd")                   # same size, other content
    os.utime(inp, ns=(1, 10**18 + 5))
    assert not is_done(layout, u)
    run_units(layout, [u], work, progress=False)
    assert calls == ["v", "v"]
    (tmp_path / "out.bin").write_text("vX")  # an output patched after its record
    assert not is_done(layout, u)


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(tmp_path / "final.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def _hold_lock(path, ready, release):
    with BuildLock(BuildLayout(path)):
        ready.set()
        release.wait(10)


def test_second_build_on_one_folder_is_refused(tmp_path):
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    p.start()
    try:
        assert ready.wait(10)
        with pytest.raises(BuildLockedError, match=f"another build \\(pid {p.pid}\\)"):
            with BuildLock(BuildLayout(tmp_path)):
                pass
    finally:
        release.set()
        p.join()
    with BuildLock(BuildLayout(tmp_path)):  # free again
        pass


def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    """After keep_freed_memory() a 4 MiB block comes from glibc's heap (the
    [heap] mapping), not from a fresh mmap as it does by default (checked
    in a child process, whose allocator we may change)."""
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc malloc tuning applies on Linux only")
    probe = r"""
import sys
import numpy as np
from dhm_data.build.runner import keep_freed_memory

def in_heap(a):
    addr = a.ctypes.data
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return True
    return False

before = in_heap(np.empty(4 << 20, np.uint8))
ok = keep_freed_memory()
after = in_heap(np.empty(4 << 20, np.uint8))
print(before, ok, after)
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    if out[1] == "False":
        pytest.skip("no glibc mallopt here (musl?)")
    assert out == ["False", "True", "True"]

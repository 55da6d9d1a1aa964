"""The staged, resumable runner: units of work = (stage, shard).

A unit has a *fingerprint*: a hash of its stage parameters and of its inputs
(file paths, sizes and modification times, and the fingerprints of the
units it consumes).  The work function writes the unit's outputs under
temporary names and renames them into place (:mod:`dhm_data.atomic`); only
then does the runner, in the main process, write the unit's record
``.records/<stage>/<unit>.json``.  A rerun skips a unit whose record carries
the same fingerprint and whose outputs exist with the recorded size and
modification time, and redoes every other unit.  Killed at any point, a rerun therefore yields the
same outputs as an uninterrupted run.

Parallelism: joblib across units (``jobs`` processes, ``backend`` any joblib
backend, e.g. ``loky`` locally or ``dask`` on a cluster); work functions
return small metadata dicts, never arrays.  One lock file per build directory
keeps two builds from writing it at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dhm_data import atomic
from dhm_data.build.layout import BuildLayout
from dhm_data.errors import BackendError, BuildLockedError, UnitError


_RESUME = "units finished before it are kept; fix the cause and rerun the same command to resume"


def _unit_failure(u: "Unit", e: BaseException, what: str = "failed") -> UnitError:
    outs = ", ".join(str(o) for o in u.outputs)
    return UnitError(f"stage {u.stage}, unit {u.name} (output {outs}) {what}: {type(e).__name__}: {e}; {_RESUME}",
                     u.stage, u.name)


@dataclass
class Unit:
    """One unit of work.  ``payload`` is passed to the work function (it must
    pickle); ``outputs`` are the files the unit creates; ``n`` its sample count
    (for the progress bar)."""

    stage: str
    name: str
    fingerprint: str
    outputs: list
    payload: object
    n: int = 0
    meta: dict = field(default_factory=dict)


def fingerprint(params, paths=(), extra=()) -> str:
    """sha256 over JSON ``params``, each path's (name, size, mtime_ns) -- a
    missing or unreadable file (symlink loop, ...) counts as such -- and
    ``extra`` strings."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError as e:  # missing, a symlink loop, unreadable: the unit's reader names the problem
            h.update(f"{p}\0missing\n".encode() if e.errno == errno.ENOENT else f"{p}\0unreadable\0{e.errno}\n".encode())
    for e in extra:
        h.update(str(e).encode() + b"\n")
    return h.hexdigest()


def is_done(layout: BuildLayout, unit: Unit) -> bool:
    rec = read_record(layout, unit.stage, unit.name)
    if rec is None or rec.get("fingerprint") != unit.fingerprint:
        return False
    stats = rec.get("outputs", {})
    for out in unit.outputs:
        p = Path(out)
        if not p.is_file() or stats.get(p.name) != _stat(p):
            return False
    return True


def _stat(p: Path) -> list:
    """(size, mtime_ns) of an output: a file replaced or rewritten after its
    record (a truncated or patched shard) no longer matches."""
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def read_record(layout: BuildLayout, stage: str, name: str) -> dict | None:
    p = layout.record(stage, name)
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_record(layout: BuildLayout, unit: Unit, result: dict) -> None:
    atomic.write_json(
        layout.record(unit.stage, unit.name),
        {
            "stage": unit.stage,
            "unit": unit.name,
            "fingerprint": unit.fingerprint,
            "outputs": {Path(o).name: _stat(Path(o)) for o in unit.outputs if Path(o).is_file()},
            "result": result,
        },
    )


class BuildLock:
    """``fcntl.flock`` on ``OUT/.lock``, held for the life of the build; the
    holder's pid is written into it for the error message."""

    def __init__(self, layout: BuildLayout):
        self.path = layout.lock
        self._f = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = ""
            for _ in range(40):  # the holder writes its pid just after taking the lock
                f.seek(0)
                holder = f.read().strip()
                if holder:
                    break
                time.sleep(0.025)
            holder = holder or "unknown"
            f.close()
            raise BuildLockedError(
                f"{self.path.parent}: another build (pid {holder}) is writing this directory; "
                "wait for it to finish or use another --out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._f = f
        return self

    def __exit__(self, *exc):
        if self._f is not None:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)
            self._f.close()
            self._f = None


def record_plan(layout: BuildLayout, units: list[Unit]) -> None:
    """Add the stage's planned units (fingerprint, outputs, samples) to
    ``plan.json``, so that :func:`plan_status` can tell done from left."""
    plan = json.loads(layout.plan_file.read_text()) if layout.plan_file.exists() else {}
    for stage in {u.stage for u in units}:
        plan[stage] = {u.name: {"fingerprint": u.fingerprint, "outputs": [str(o) for o in u.outputs], "n": u.n}
                       for u in units if u.stage == stage}
    atomic.write_json(layout.plan_file, plan)


def plan_status(layout: BuildLayout) -> dict:
    """``{stage: {"done": [unit names], "left": [unit names], "samples_left": n}}``
    from ``plan.json`` and the unit records (a record with a stale fingerprint,
    or a changed output, counts as left)."""
    plan = json.loads(layout.plan_file.read_text()) if layout.plan_file.exists() else {}
    out = {}
    for stage, units in plan.items():
        done, left, n_left = [], [], 0
        for name, u in units.items():
            unit = Unit(stage, name, u["fingerprint"], [Path(o) for o in u["outputs"]], None, u["n"])
            if is_done(layout, unit):
                done.append(name)
            else:
                left.append(name)
                n_left += u["n"]
        out[stage] = {"done": done, "left": left, "samples_left": n_left}
    return out


def run_units(
    layout: BuildLayout,
    units: list[Unit],
    work: Callable[[object], dict],
    *,
    jobs: int = 1,
    backend: str = "loky",
    desc: str = "",
    progress: bool = True,
    scheduler: str | None = None,
) -> dict[str, dict]:
    """Run the units not yet done; return ``{unit name: result}`` for all
    units (skipped ones give their recorded result)."""
    from tqdm.auto import tqdm

    record_plan(layout, units)
    results: dict[str, dict] = {}
    todo = []
    for u in units:
        if is_done(layout, u):
            results[u.name] = read_record(layout, u.stage, u.name)["result"]
        else:
            todo.append(u)
    total = sum(u.n for u in units)
    done_n = total - sum(u.n for u in todo)
    bar = tqdm(total=total, initial=done_n, desc=desc, unit="sample", disable=not progress, dynamic_ncols=True)
    try:
        if backend == "loky" and (jobs == 1 or len(todo) <= 1):
            for u in todo:
                try:
                    res = work(u.payload)
                except Exception as e:
                    raise _unit_failure(u, e) from e
                _record(layout, u, res)
                results[u.name] = res
                bar.update(u.n)
        else:
            from joblib import Parallel, delayed, parallel_config

            by_name = {u.name: u for u in todo}
            with backend_session(backend, scheduler, jobs), parallel_config(backend=backend, n_jobs=jobs):
                gen = Parallel(return_as="generator_unordered")(delayed(_call)(work, u.name, u.payload) for u in todo)
                try:
                    for name, res, err in gen:
                        u = by_name[name]
                        if err is not None:
                            raise _unit_failure(u, err)
                        _record(layout, u, res)
                        results[name] = res
                        bar.update(u.n)
                except UnitError:
                    raise
                except Exception as e:
                    # The pool broke: a worker process was killed (SIGKILL, out of
                    # memory) or the cluster went away.  Units are rerun, not lost.
                    stage = todo[0].stage
                    left = [u.name for u in todo if u.name not in results]
                    raise UnitError(
                        f"stage {stage}: the parallel run stopped ({type(e).__name__}: {e}); {len(left)} of "
                        f"{len(units)} units unfinished (first: {', '.join(left[:3])}); {_RESUME}", stage) from e
    finally:
        bar.close()
    return results


@contextlib.contextmanager
def backend_session(backend: str, scheduler: str | None, jobs: int):
    """What a joblib backend needs around it.

    ``dask``: a ``dask.distributed.Client`` connected to ``scheduler`` (an
    address such as ``tcp://head:8786``) or, without one, a local cluster of
    ``jobs`` single-threaded worker processes.  ``ray``: ``ray.init`` (address
    from ``scheduler`` or ``RAY_ADDRESS``) and joblib's Ray backend registered.
    Other backends (``loky``, ``multiprocessing``, ``threading``) need nothing.
    """
    if backend == "dask":
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as e:
            raise BackendError("--backend dask needs dask.distributed: pip install 'dhm-data[dask]'") from e
        if scheduler:
            try:
                client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as e:
                raise BackendError(f"--scheduler {scheduler}: cannot reach the dask scheduler ({e})") from e
            with client:
                yield client
        else:
            with LocalCluster(n_workers=max(1, jobs), threads_per_worker=1, processes=True,
                              dashboard_address=":0") as cluster, Client(cluster) as client:
                yield client
    elif backend == "ray":
        try:
            import ray
            from ray.util.joblib import register_ray
        except ImportError as e:
            raise BackendError("--backend ray needs ray: pip install 'ray[default]'") from e
        register_ray()
        started = not ray.is_initialized()
        if started:
            ray.init(address=scheduler)
        try:
            yield None
        finally:
            if started:
                ray.shutdown()
    else:
        yield None


def _record(layout: BuildLayout, u: Unit, res: dict) -> None:
    try:
        write_record(layout, u, res)
    except OSError as e:
        raise _unit_failure(u, e, f"finished but its record {layout.record(u.stage, u.name)} could not be written") from e


def _call(work, name, payload):
    """Worker side: ``(name, result, None)`` or ``(name, None, exception)``, so
    that the main process can name the unit that failed."""
    try:
        return name, work(payload), None
    except Exception as e:
        try:
            import pickle

            pickle.dumps(e)
        except Exception:
            e = RuntimeError(f"{type(e).__name__}: {e}")
        return name, None, e


#: glibc mallopt parameters (malloc.h) and the values a worker uses.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_WORKER_MMAP_THRESHOLD = 32 << 20  # glibc rejects more than HEAP_MAX_SIZE / 2 (32 MiB on 64-bit)
_WORKER_TRIM_THRESHOLD = 128 << 20


def keep_freed_memory() -> bool:
    """Make this process's glibc ``malloc`` serve blocks up to 32 MiB from its
    heap and keep up to 128 MiB of freed memory for reuse, instead of mapping
    fresh pages for every large block and handing them back on ``free``.

    Why: a worker decodes one 600 KB image after another (OpenCV allocates
    each output) and HDF5 allocates a buffer per compressed chunk.  By
    default every such block over the adaptive threshold is a new ``mmap``,
    and first-touching fresh pages cost about 3 us per 4 KiB page on this
    project's VMs: measured, that alone doubled the JPEG decode time
    (1,900 -> 930 images/s in one process).  The cost is resident memory
    that stays with the worker (at most the trim threshold above its peak).
    Returns False where there is no glibc (macOS, Windows, musl) or it
    refuses a setting.  Called by the build's workers; idempotent.  It is a
    process-wide setting: a build with one job runs in the calling process
    (the CLI, or your Python session when you call ``run_build``), which
    keeps the setting afterwards.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    mapped = bool(mallopt(_M_MMAP_THRESHOLD, _WORKER_MMAP_THRESHOLD))
    trimmed = bool(mallopt(_M_TRIM_THRESHOLD, _WORKER_TRIM_THRESHOLD))
    return mapped and trimmed

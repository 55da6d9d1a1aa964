"""The staged, resumable runner: units of work = (stage, shard).

A unit has a *fingerprint*: a hash of its stage parameters, the names of
its input files and any extra values (:func:`fingerprint`, the one place
that fingerprints anything in dhm-data).  The work function writes the
unit's outputs under temporary names and renames them into place
(:mod:`dhm_data.atomic`); the unit's record ``.records/<stage>/<unit>.json``
then stores the fingerprint and, for every input and output file, its size,
modification time and content hash (sha256).

A unit is *done* (:func:`is_done`) when its record carries the same
fingerprint and every input and output is unchanged in content: size and
modification time first (no read), the content hash only where they differ.
So a build folder or a dataset copied with new modification times
(``cp -r``, rsync without ``-t``, a cluster's staging) is still done, while
a file rewritten with other bytes is redone.  A build refreshes the records
it confirmed by hash, so the next check is by size and time again.
``dhm-data status`` uses the same test read-only, so it agrees with what
the next ``build`` will do.  Killed at any point, a rerun yields the same
outputs as an uninterrupted run.

Parallelism: joblib across units (``jobs`` processes, ``backend`` any joblib
backend, e.g. ``loky`` locally or ``dask`` on a cluster); work functions
return small metadata dicts, never arrays.  One lock file per build directory
keeps two builds from writing it at once.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pickle
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

from dhm_data import atomic
from dhm_data.build.backends import backend_session
from dhm_data.build.file_states import content_hash, file_state
from dhm_data.build.layout import BuildLayout
from dhm_data.build.memory import keep_freed_memory  # noqa: F401  (re-exported: workers call it)
from dhm_data.build.shard_pool import start_pool, stop_pool
from dhm_data.errors import BuildLockedError, UnitError

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
    #: the files the unit reads (their content decides whether it is done)
    inputs: tuple = ()


def fingerprint(params, paths=(), extra=(), arrays=()) -> str:
    """sha256 (hex) over JSON ``params``, the names of ``paths`` (their
    content is checked by :func:`is_done`, not hashed here), ``extra``
    strings and ``arrays`` (each its shape and bytes, C order)."""
    import numpy as np  # only for arrays

    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for p in paths:
        h.update(f"{p}\n".encode())
    for e in extra:
        h.update(str(e).encode() + b"\n")
    for a in arrays:
        if a is not None:
            a = np.ascontiguousarray(a)
            h.update(str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def _unchanged(p, recorded) -> tuple[bool, list | None]:
    """Is file ``p`` as ``recorded``?  ``(same, new state)``: the new state
    (with its hash) is returned when only the size/time check failed and the
    content proved equal, so the record can be refreshed."""
    if recorded is None:
        return False, None
    now = file_state(p, with_hash=False)
    if len(now) != 2 or len(recorded) < 2 or isinstance(recorded[0], str):
        return now == list(recorded), None  # missing / unreadable then and now
    if now == list(recorded[:2]):
        return True, None
    if len(recorded) < 3 or now[0] != recorded[0]:  # an old record without a hash, or another size
        return False, None
    try:
        digest = content_hash(p)
    except OSError:
        return False, None
    return digest == recorded[2], now + [digest]


def unit_state(layout: BuildLayout, unit: Unit) -> tuple[bool, dict | None]:
    """``(done, refreshed record or None)`` of ``unit``: its record's
    fingerprint matches and every output and input is unchanged in content
    (see the module docstring).  The refreshed record holds the new sizes
    and times of files whose content was confirmed by hash."""
    rec = read_record(layout, unit.stage, unit.name)
    if rec is None or rec.get("fingerprint") != unit.fingerprint:
        return False, None
    refreshed = False
    outputs, inputs = dict(rec.get("outputs", {})), dict(rec.get("inputs", {}))
    for out in unit.outputs:
        p = Path(out)
        same, new = _unchanged(p, outputs.get(p.name))
        if not same:
            return False, None
        if new is not None:
            outputs[p.name], refreshed = new, True
    for p in unit.inputs:
        same, new = _unchanged(p, inputs.get(str(p)))
        if not same:
            return False, None
        if new is not None:
            inputs[str(p)], refreshed = new, True
    return True, (dict(rec, outputs=outputs, inputs=inputs) if refreshed else None)


def is_done(layout: BuildLayout, unit: Unit) -> bool:
    """True when the next build would skip ``unit`` (read-only)."""
    return unit_state(layout, unit)[0]


def files_state(unit: Unit) -> dict:
    """What a record stores about the unit's files: ``{"inputs": {path:
    state}, "outputs": {name: state}}`` (:func:`file_state`, with hashes)."""
    return {"inputs": {str(p): file_state(p) for p in unit.inputs},
            "outputs": {Path(o).name: file_state(o) for o in unit.outputs if Path(o).is_file()}}


def read_record(layout: BuildLayout, stage: str, name: str) -> dict | None:
    p = layout.record(stage, name)
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_record(layout: BuildLayout, unit: Unit, result: dict, files: dict | None = None) -> None:
    """The unit's record: fingerprint, result and its files' states
    (``files`` as :func:`files_state` returns it; computed here when None)."""
    files = files_state(unit) if files is None else files
    atomic.write_json(
        layout.record(unit.stage, unit.name),
        {"stage": unit.stage, "unit": unit.name, "fingerprint": unit.fingerprint, "result": result, **files},
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
        plan[stage] = {u.name: {"fingerprint": u.fingerprint, "n": u.n,
                                "outputs": [_relative(layout, o) for o in u.outputs],
                                "inputs": [str(p) for p in u.inputs]}
                       for u in units if u.stage == stage}
    atomic.write_json(layout.plan_file, plan)


def _relative(layout: BuildLayout, p) -> str:
    """An output path relative to the build folder (a copied folder still
    finds its files); absolute where it lies elsewhere."""
    try:
        return Path(p).relative_to(layout.root).as_posix()
    except ValueError:
        return str(p)


def plan_status(layout: BuildLayout) -> dict:
    """``{stage: {"done": [unit names], "left": [unit names], "samples_left": n}}``
    from ``plan.json`` and the unit records, by :func:`is_done`: the same test
    the next build applies (a stale fingerprint, a changed input or output
    counts as left)."""
    plan = json.loads(layout.plan_file.read_text()) if layout.plan_file.exists() else {}
    out = {}
    for stage, units in plan.items():
        done, left, n_left = [], [], 0
        for name, u in units.items():
            unit = Unit(stage, name, u["fingerprint"], [layout.root / o for o in u["outputs"]], None, u["n"],
                        inputs=tuple(Path(p) for p in u.get("inputs", ())))
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
    helped: Callable[[object, object], dict] | None = None,
) -> dict[str, dict]:
    """Run the units not yet done; return ``{unit name: result}`` for all
    units (skipped ones give their recorded result).

    With ``backend="loky"`` and ``jobs > 1`` the local worker pool
    (:mod:`dhm_data.build.shard_pool`) runs one unit per worker; when fewer
    units are left than workers and the stage gives ``helped(payload, pool)``
    (the same unit, its blocks prepared by the pool's workers while this
    process writes), the units run that way, one after another.
    """
    record_plan(layout, units)
    results: dict[str, dict] = {}
    todo = []
    for u in units:
        done, refreshed = unit_state(layout, u)
        if not done:
            todo.append(u)
            continue
        if refreshed is not None:  # content confirmed by hash: next time size and time suffice
            atomic.write_json(layout.record(u.stage, u.name), refreshed)
        results[u.name] = read_record(layout, u.stage, u.name)["result"]
    total = sum(u.n for u in units)
    done_n = total - sum(u.n for u in todo)
    bar = _progress_bar(total, done_n, desc) if progress else _NoBar()

    def finished(u, res):
        _record(layout, u, res)
        results[u.name] = res[0]
        bar.update(u.n)

    try:
        local_pool = backend == "loky" and jobs > 1 and todo
        if local_pool and helped is not None and len(todo) < jobs:
            pool = start_pool(jobs)
            for u in todo:
                try:
                    res = _run_one(lambda payload: helped(payload, pool), u, pool)
                except Exception as e:
                    raise _unit_failure(u, e, f"failed ({pool.deaths()})" if pool.broken else "failed") from e
                finished(u, res)
        elif backend == "loky" and (jobs == 1 or len(todo) <= 1):
            for u in todo:
                try:
                    res = _run_one(work, u)
                except Exception as e:
                    raise _unit_failure(u, e) from e
                finished(u, res)
        elif backend == "loky":
            _run_on_pool(start_pool(jobs), work, todo, units, results, finished)
        else:
            from joblib import Parallel, delayed, parallel_config  # deferred: only cluster backends (~0.1 s of start-up)

            by_name = {u.name: u for u in todo}
            with backend_session(backend, scheduler, jobs), parallel_config(backend=backend, n_jobs=jobs):
                gen = Parallel(return_as="generator_unordered")(delayed(_call)(work, u) for u in todo)
                try:
                    for name, res, err in gen:
                        u = by_name[name]
                        if err is not None:
                            raise _unit_failure(u, err)
                        finished(u, res)
                except UnitError:
                    raise
                except Exception as e:
                    raise _pool_broke(e, todo, units, results) from e
    except KeyboardInterrupt:
        stop_pool()  # the workers' units stop too: finished units are kept, a rerun resumes
        raise
    finally:
        bar.close()
    return results


def _progress_bar(total: int, initial: int, desc: str):
    # deferred: tqdm costs ~50 ms of start-up (it reads its package metadata), paid only when a bar is drawn
    from tqdm.autonotebook import tqdm  # tqdm.auto would add asyncio support a build does not use

    return tqdm(total=total, initial=initial, desc=desc, unit="sample", dynamic_ncols=True)


class _NoBar:
    """What ``progress=False`` draws: nothing."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _run_on_pool(pool, work, todo: list, units: list, results: dict, finished) -> None:
    """One unit per process: the pool's workers and this one
    (:meth:`~dhm_data.build.shard_pool.ShardPool.run_each`)."""
    by_name = {u.name: u for u in todo}
    gen = pool.run_each(partial(_call, work), todo)
    try:
        for name, res, err in gen:
            if err is not None:
                raise _unit_failure(by_name[name], err)
            finished(by_name[name], res)
    except UnitError:
        gen.close()  # cancels the units not started, lets the running ones finish
        raise
    except Exception as e:
        # The pool broke: a worker process was killed (SIGKILL, out of memory).
        # Units are rerun, not lost.
        gen.close()
        raise _pool_broke(e, todo, units, results, pool.deaths()) from e


def _pool_broke(e: BaseException, todo: list, units: list, results: dict, deaths: str = "") -> UnitError:
    stage = todo[0].stage
    left = [u.name for u in todo if u.name not in results]
    why = f"{deaths}: " if deaths else ""
    return UnitError(f"stage {stage}: the parallel run stopped ({why}{type(e).__name__}: {e}); {len(left)} of "
                     f"{len(units)} units unfinished (first: {', '.join(left[:3])}); {_RESUME}", stage)


def remove_stale(layout: BuildLayout, stage: str, units: list, existing) -> None:
    """Delete ``stage`` outputs and unit records that the current plan does not
    contain (a smaller shard count, a changed split, a --limit trial after a
    full build), so the folder holds exactly what build.json describes."""
    planned = {Path(o) for u in units for o in u.outputs}
    for p in existing:
        if Path(p) not in planned:
            Path(p).unlink(missing_ok=True)
    names = {u.name for u in units}
    records = layout.root / ".records" / stage
    for r in sorted(records.rglob("*.json")) if records.is_dir() else []:
        if r.relative_to(records).with_suffix("").as_posix() not in names:
            r.unlink(missing_ok=True)


def _record(layout: BuildLayout, u: Unit, res: tuple) -> None:
    try:
        write_record(layout, u, res[0], res[1])
    except OSError as e:
        raise _unit_failure(u, e, f"finished but its record {layout.record(u.stage, u.name)} could not be written") from e


def _run_one(work, u: Unit, pool=None) -> tuple:
    """``(result, files state)`` of one unit: the inputs' states are taken
    before the work reads them, the outputs' after it wrote them; the hashing
    runs where the work runs (a worker process, in parallel), the inputs'
    shared with ``pool``'s workers when the unit is helped by them."""
    if pool is None:
        inputs = {str(p): file_state(p) for p in u.inputs}
    else:
        paths = [str(p) for p in u.inputs]
        step = max(1, -(-len(paths) // (4 * pool.jobs)))
        chunks = pool.map_ordered(_file_states, [(paths[i:i + step],) for i in range(0, len(paths), step)])
        inputs = dict(zip(paths, (st for c in chunks for st in c)))
    res = work(u.payload)
    return res, {"inputs": inputs, "outputs": files_state(Unit(u.stage, u.name, "", u.outputs, None))["outputs"]}


def _file_states(paths: list) -> list:
    """:func:`file_state` of each path (a task for the pool's workers)."""
    return [file_state(p) for p in paths]


def _call(work, u: Unit):
    """Worker side: ``(name, (result, files), None)`` or ``(name, None,
    exception)``, so that the main process can name the unit that failed."""
    name = u.name
    try:
        return name, _run_one(work, u), None
    except Exception as e:
        try:
            pickle.dumps(e)
        except Exception:
            e = RuntimeError(f"{type(e).__name__}: {e}")
        return name, None, e

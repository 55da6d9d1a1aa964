"""What ``dhm-data status`` and ``dhm-data verify`` report, as library
functions (a training script can call them; the commands only print).

:func:`build_status`: per split the samples, per stage the units done and
left (by :func:`dhm_data.build.runner.plan_status`, the same test the next
build applies), finished or not.  :func:`verify_build`: every shard that
``build.json`` lists verified (:func:`dhm_data.shards.verify_shard`) and the
sample counts per split checked against ``build.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dhm_data.build.layout import BuildLayout
from dhm_data.build.runner import plan_status
from dhm_data.errors import BuildError, ShardError
from dhm_data.shards import verify_shard


@dataclass(frozen=True)
class BuildStatus:
    """``splits``: ``{split: samples}``; ``stages``: ``{stage: {"done": [...],
    "left": [...], "samples_left": n}}``; ``summary``: ``build.json`` if the
    build finished, else None."""

    root: Path
    splits: dict
    stages: dict
    summary: dict | None

    @property
    def finished(self) -> bool:
        return self.summary is not None and not any(st["left"] for st in self.stages.values())


@dataclass(frozen=True)
class VerifyReport:
    """``shards`` verified, ``samples`` per split found in them, and the
    ``problems`` (sentences naming the file or split; empty = all good)."""

    root: Path
    shards: int
    samples: dict
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def build_status(out) -> BuildStatus:
    """The state of the build folder ``out``; :class:`BuildError` if it is
    not a build folder."""
    layout = BuildLayout(out)
    if not layout.split_file.exists():
        raise BuildError(f"{out}: not a build folder (no {layout.split_file.name}); run `dhm-data build` first")
    splits = {s: len(names) for s, names in json.loads(layout.split_file.read_text()).items()}
    summary = json.loads(layout.summary.read_text()) if layout.summary.exists() else None
    return BuildStatus(layout.root, splits, plan_status(layout), summary)


def verify_build(out) -> VerifyReport:
    """Verify every shard of the finished build ``out`` and its counts;
    :class:`BuildError` when there is no ``build.json``."""
    layout = BuildLayout(out)
    if not layout.summary.exists():
        raise BuildError(f"{out}: no build.json; the build did not finish (rerun it) or this is not a build folder")
    summary = json.loads(layout.summary.read_text())
    problems, counts = [], {}
    for stage, st in plan_status(layout).items():
        if st["left"]:
            problems.append(f"stage {stage}: {len(st['left'])} units not done or changed since their record "
                            f"({', '.join(st['left'][:3])}); rerun the build")
    for name in summary["shards"]:
        split, shard = name.split("/")
        path = layout.split_dir(split) / f"{shard}.h5"
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        try:
            report = verify_shard(path)
        except ShardError as e:
            problems.append(str(e))
            continue
        counts[split] = counts.get(split, 0) + int(report["n_samples"])
    for split, n in summary["written"].items():
        if counts.get(split, 0) != n and not any(split in p for p in problems):
            problems.append(f"split {split}: shards hold {counts.get(split, 0)} samples, build.json says {n}")
    return VerifyReport(layout.root, len(summary["shards"]), counts, problems)

"""``dhm-data build``: the data flow, top down.

1. :func:`make_plan` decides everything before any work, writing nothing:
   the checked pipeline (:mod:`.config`), the reader, the scan, the count
   check against ``manifests/``, the split, the model (checked against the
   labels it will be used with, :mod:`.model_check`).
2. :func:`run_build` takes the folder's lock, claims the folder
   (:func:`claim_folder`), records the plan, runs the fit stage
   (:mod:`.fit_stage`) if the pipeline has one, then the prepare stage
   (:mod:`.prepare_stage`), and writes the summary ``build.json``, the
   rejections and the mean-shape DHM.

:mod:`.runner` makes each stage resumable; :mod:`.layout` is the output folder.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dhm_data import __version__, atomic
from dhm_data.build import fit_stage, prepare_stage
from dhm_data.build.config import Pipeline, load_pipeline
from dhm_data.build.layout import BuildLayout
from dhm_data.build.manifests import assign_split, check_counts, load_manifest
from dhm_data.build.model_check import check_label_failures, check_model_for_labels, parameters_record
from dhm_data.build.runner import BuildLock, remove_stale, run_units
from dhm_data.build.shard_pool import start_pool
from dhm_data.datasets import get_reader
from dhm_data.datasets.base import DatasetReader
from dhm_data.errors import BuildError, DatasetError, DhmDataError
from dhm_data.models.formats import load_model
from dhm_data.models.formats.compact import save_compact
from dhm_data.models.morphable import MorphableModel
from dhm_data.models.synthetic import SYNTHETIC_MODEL_ID, load_synthetic_model
from dhm_data.prepare.row import PrepareConfig, mean_shape_dhm


@dataclass(frozen=True)
class BuildRequest:
    """What the user asked for (the command's options); never changed."""

    pipeline: str
    root: Path
    out: Path
    bfm: Path | None = None
    jobs: int = 1
    backend: str = "loky"
    strict: bool = False
    overrides: dict = field(default_factory=dict)
    progress: bool = True
    limit: int | None = None
    landmarks_3d: Path | None = None
    scheduler: str | None = None
    #: replace a build of another pipeline in ``out``
    force: bool = False


@dataclass(frozen=True)
class BuildPlan:
    """Everything decided before any work."""

    pipeline: Pipeline
    reader: DatasetReader
    items: tuple
    splits: dict
    count_problems: tuple
    model: MorphableModel


def resolve_model(bfm, reader: DatasetReader) -> MorphableModel:
    """``--bfm`` if given; else the model a synthetic tree records; else an
    error (real data needs the user's Basel Face Model)."""
    if bfm is not None:
        return load_model(bfm)
    marker = reader.synthetic_marker()

    if marker is not None and marker.get("model") == SYNTHETIC_MODEL_ID:
        return load_synthetic_model()
    if marker is not None:
        raise BuildError(
            f"{reader.root}: this synthetic tree was drawn from a user model ({marker.get('model_name', 'custom')}); "
            "give that model with --bfm"
        )
    raise BuildError(
        f"{reader.root}: --bfm is required for real data (a Basel Face Model file or folder, e.g. 01_MorphableModel.mat "
        "with the 3DDFA expression model, face3d's BFM.mat, 3DDFA_V2's bfm_noneck_v3.pkl or the 68-row text subset); "
        "only trees written by `dhm-data synth` bring their own model"
    )


def plan(req: BuildRequest):
    """The pipeline, reader, items, manifest, count problems and splits (no
    model, nothing written)."""
    pipeline = load_pipeline(req.pipeline, req.overrides)
    reader = get_reader(pipeline.reader)(req.root, **pipeline.reader_kwargs)
    items = reader.items()
    if not items:
        raise DatasetError(f"{reader.root}: no samples found. {reader.how_to_get}")
    if req.limit is not None:
        items = items[: req.limit]
    manifest = load_manifest(reader.name)
    count_problems = [] if req.limit is not None else check_counts(items, manifest, reader.synthetic_marker())
    splits = assign_split(items, pipeline.split, manifest)
    return pipeline, reader, items, manifest, count_problems, splits


def make_plan(req: BuildRequest, echo) -> BuildPlan:
    """:func:`plan`, the count check (warned, or fatal with ``--strict``) and
    the model, checked against the labels: what a build and a fit-only run
    decide before taking the lock."""
    pipeline, reader, items, _, count_problems, splits = plan(req)
    for p in count_problems:
        echo(f"warning: count mismatch: {p}")
    if count_problems and req.strict:
        raise BuildError("--strict: the scan disagrees with the manifest: " + "; ".join(count_problems))
    model = resolve_model(req.bfm, reader)
    if not pipeline.has_fit_stage:  # fitted parameters belong to the model by construction
        check_model_for_labels(model, reader)
    return BuildPlan(pipeline, reader, tuple(items), splits, tuple(count_problems), model)


@contextlib.contextmanager
def _claimed_folder(req: BuildRequest, echo, unfinished: str):
    """Plan the build (workers starting meanwhile), then hold its folder:
    locked, claimed for this pipeline, the summary named ``unfinished``
    (a :class:`BuildLayout` attribute) dropped until this run finishes it,
    the plan recorded.  Yields ``(plan, layout, 68-row landmark model)``."""
    start_workers(req)
    p = make_plan(req, echo)
    layout = BuildLayout(req.out)
    lm_model = p.model.landmark_model()
    with BuildLock(layout):
        claim_folder(layout, p.pipeline, req.force)
        getattr(layout, unfinished).unlink(missing_ok=True)
        _record_plan(layout, p.splits, lm_model)
        yield p, layout, lm_model


def run_build(req: BuildRequest, echo=print) -> dict:
    """Run (or resume) a build; returns the summary also written to build.json."""
    with _claimed_folder(req, echo, "summary") as (p, layout, lm_model):
        fits, fit_summary = {}, None
        if p.pipeline.has_fit_stage:
            pipeline, l3_path, reused = fit_stage.earlier_fit_settings(layout, p.pipeline, req.landmarks_3d)
            if reused:
                echo(f"using the fit settings of the earlier `dhm-data fit-bfm` run ({layout.fit_summary})")
                p = replace(p, pipeline=pipeline)
            fits, fit_summary = _run_fit_units(layout, p, p.model.landmark_model(contour=True), l3_path, req)
        units = prepare_stage.prepare_units(layout, p.pipeline, p.reader, lm_model, p.splits, fits, p.model.name,
                                            req.strict)
        results = run_units(layout, units, prepare_stage.prepare_shard, jobs=req.jobs, backend=req.backend,
                            desc=f"build {p.pipeline.name}", progress=req.progress, scheduler=req.scheduler,
                            helped=prepare_stage.prepare_shard_helped)
        remove_stale(layout, "prepare", units, layout.shards())
        prepared = prepare_stage.summarise(units, results)
        summary = _summarise(layout, p, units, prepared, fit_summary)
        with atomic.atomic_path(layout.mean_dhm) as tmp:  # cheap: rewritten so it follows the crop/DHM settings
            with open(tmp, "wb") as f:
                np.save(f, mean_shape_dhm(lm_model, PrepareConfig.from_pipeline(p.pipeline)))
    check_label_failures(p.model, summary["scanned"], prepared["rejections"])
    n_rej = summary["rejected"]
    if n_rej and req.strict:
        raise BuildError(f"--strict: {n_rej} samples were rejected; see {layout.rejections}")
    return summary


def run_fit(req: BuildRequest, echo=print) -> dict:
    """``dhm-data fit-bfm DATASET``: only the fit stage of the pipeline, into
    the build folder, so that a later ``dhm-data build`` of the same pipeline
    and folder finds every fit unit done and goes straight to prepare."""
    with _claimed_folder(req, echo, "fit_summary") as (p, layout, _):
        _, summary = _run_fit_units(layout, p, p.model.landmark_model(contour=True), req.landmarks_3d, req)
        atomic.write_json(layout.fit_summary, summary)
    return summary


def start_workers(req: BuildRequest) -> None:
    """Start the local worker processes of a ``--jobs N`` build now, so that
    their start-up and imports overlap the scan and the plan (a second of
    CPU per worker that would otherwise delay the first sample).  Nothing for
    one job or a cluster backend, or a pipeline that does not load (the plan
    then says why)."""
    if req.backend != "loky" or req.jobs <= 1:
        return

    try:
        reader = load_pipeline(req.pipeline, req.overrides).reader
    except DhmDataError:
        return
    start_pool(req.jobs, reader)


def _run_fit_units(layout, p: BuildPlan, lm_model, l3_path, req: BuildRequest):
    """Run (or resume) the fit units; returns ({(split, shard index): fits
    file}, summary of the fits)."""
    l3 = fit_stage.load_landmarks_3d(l3_path) if l3_path else None
    units = fit_stage.fit_units(layout, p.pipeline, p.reader, lm_model, p.splits, l3)
    res = run_units(layout, units, fit_stage.fit_shard, jobs=req.jobs, backend=req.backend, desc="fit-bfm",
                    progress=req.progress, scheduler=req.scheduler)
    remove_stale(layout, "fit", units, sorted((layout.root / "fits").glob("*/shard-*.npz")))
    summary = fit_stage.summarise(layout, units, res, p.pipeline, l3_path, len(l3 or {}))
    return {u.meta["key"]: Path(u.outputs[0]) for u in units}, summary


def claim_folder(layout: BuildLayout, pipeline: Pipeline, force: bool) -> None:
    """Make ``layout`` this pipeline's folder: a folder holding another
    pipeline's build is refused (building here would delete its shards)
    unless ``force``, which clears that build first.  Records the pipeline
    in ``pipeline.json``."""
    owner = folder_owner(layout)
    if owner is not None and owner != pipeline.name:
        if not force:
            raise BuildError(
                f"{layout.root}: holds a build of pipeline {owner!r}; building {pipeline.name!r} here would delete "
                f"its shards. Give another --out, or --force to replace that build")
        clear_build(layout)
    atomic.write_json(layout.pipeline_file, pipeline.to_dict())


def folder_owner(layout: BuildLayout) -> str | None:
    """The pipeline whose build ``layout`` holds (``pipeline.json``, else a
    ``build.json`` written before it existed), None for a new folder."""
    for f in (layout.pipeline_file, layout.summary):
        try:
            cfg = json.loads(f.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        cfg = cfg.get("pipeline", cfg) if f == layout.summary else cfg
        if isinstance(cfg, dict) and cfg.get("name"):
            return str(cfg["name"])
    return None


def clear_build(layout: BuildLayout) -> None:
    """Delete everything a build writes into ``layout`` (and nothing else)."""
    for d in [layout.root / "fits", layout.root / ".records", layout.model_cache.parent]:
        shutil.rmtree(d, ignore_errors=True)
    for p in layout.shards():
        p.unlink(missing_ok=True)
    for f in (layout.summary, layout.fit_summary, layout.plan_file, layout.split_file, layout.rejections,
              layout.mean_dhm, layout.pipeline_file):
        f.unlink(missing_ok=True)


def _record_plan(layout: BuildLayout, splits, lm_model: MorphableModel) -> None:
    """Write the split actually used and the compact landmark model workers load."""
    atomic.write_json(layout.split_file, {s: [it.name for it in its] for s, its in splits.items()})
    save_compact(lm_model, layout.model_cache)


def rejection_kind(rejection: dict) -> str:
    """A rejection reason without its file path and numbers, to count alike
    reasons together ("not a decodable image (N bytes)", ...)."""
    reason = rejection["reason"]
    path = rejection.get("path", "")
    for prefix in (path, str(Path(path).with_suffix(".mat")), str(Path(path).with_suffix(".t7"))):
        if prefix and reason.startswith(prefix + ": "):
            reason = reason[len(prefix) + 2 :]
            break
    else:
        m = re.match(r"^\S+\.(?:jpg|jpeg|png|mat|t7): ", reason)
        reason = reason[m.end():] if m else reason
    return re.sub(r"-?\d+(?:\.\d+)?", "N", reason.split(" (")[0])[:80]


def _summarise(layout, p: BuildPlan, units, prepared: dict, fit_summary=None) -> dict:
    rejections = prepared["rejections"]
    atomic.write_bytes(layout.rejections, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejections).encode())
    summary = {
        "dataset": p.reader.name,
        "pipeline": p.pipeline.to_dict(),
        "root": str(p.reader.root),
        "model": p.model.name,
        "parameters": parameters_record(p.reader, p.model, p.pipeline.has_fit_stage),
        "package_version": __version__,
        "scanned": sum(len(v) for v in p.splits.values()),
        "written": prepared["written"],
        "rejected": len(rejections),
        "rejection_reasons": dict(Counter(rejection_kind(r) for r in rejections)),
        "warnings": prepared["warnings"],
        "count_mismatches": list(p.count_problems),
        "shards": [u.name for u in units],
        "label_sources": prepared["label_sources"],
        "label_check": prepared["label_check"],
        "fit": fit_summary,
    }
    atomic.write_json(layout.summary, summary)
    return summary

"""``dhm-data build``: the I/O and parallel edge around the pure prepare step.

Flow: read the pipeline -> scan the raw dataset (reader.items) -> check counts
against ``manifests/`` -> split -> [fit stage: 3DMM parameters per shard] ->
prepare stage: per shard, load + decode + crop + DHM + write an HDF5 shard ->
summary (``build.json``), rejections, mean-shape DHM.  See :mod:`dhm_data.build.runner`
for resumability and :mod:`dhm_data.build.layout` for the output folder.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dhm_data import __version__, atomic
from dhm_data.geometry.crop import CropWindow
from dhm_data.errors import BuildError, DatasetError
from dhm_data.datasets import get_reader
from dhm_data.datasets.base import DatasetReader, Item, Sample
from dhm_data.build.manifests import assign_split, check_counts, load_manifest, shard_chunks
from dhm_data.build.layout import BuildLayout
from dhm_data.models.morphable import MorphableModel
from dhm_data.build.config import load_pipeline
from dhm_data.prepare.row import (
    PrepareConfig,
    check_landmarks,
    mean_shape_dhm,
    pose_parameters,
    prepare_row,
    sample_window,
    source_landmarks_3d,
)
from dhm_data.errors import PrepareError
from dhm_data.build.runner import BuildLock, Unit, fingerprint, keep_freed_memory, run_units


@dataclass
class BuildRequest:
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


def resolve_model(bfm, reader: DatasetReader) -> MorphableModel:
    """``--bfm`` if given; else the model a synthetic tree records; else an
    error (real data needs the user's Basel Face Model)."""
    if bfm is not None:
        from dhm_data.models.formats import load_model

        return load_model(bfm)
    marker = reader.synthetic_marker()
    from dhm_data.models.synthetic import SYNTHETIC_MODEL_ID, load_synthetic_model

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
    """Everything decided before any work: config, reader, items, splits."""
    cfg = load_pipeline(req.pipeline, req.overrides)
    reader = get_reader(cfg["build"]["reader"])(req.root, **cfg.get("reader", {}))
    items = reader.items()
    if not items:
        raise DatasetError(f"{reader.root}: no samples found. {reader.how_to_get}")
    if req.limit is not None:
        items = items[: req.limit]
    manifest = load_manifest(reader.name)
    marker = reader.synthetic_marker()
    count_problems = [] if req.limit is not None else check_counts(items, manifest, marker)
    splits = assign_split(items, cfg["build"]["split"], manifest)
    return cfg, reader, items, manifest, count_problems, splits


def _checked_plan(req: BuildRequest, echo):
    """:func:`plan`, the count check (warned, or fatal with ``--strict``) and
    the model: what a build and a fit-only run do before taking the lock."""
    cfg, reader, items, manifest, count_problems, splits = plan(req)
    for p in count_problems:
        echo(f"warning: count mismatch: {p}")
    if count_problems and req.strict:
        raise BuildError("--strict: the scan disagrees with the manifest: " + "; ".join(count_problems))
    return cfg, reader, count_problems, splits, resolve_model(req.bfm, reader)


def _record_plan(layout: BuildLayout, splits, lm_model: MorphableModel) -> None:
    """Write the split actually used and the compact landmark model workers load."""
    atomic.write_json(layout.split_file, {s: [it.name for it in its] for s, its in splits.items()})
    _cache_model(layout, lm_model)


def run_build(req: BuildRequest, echo=print) -> dict:
    """Run (or resume) a build; returns the summary also written to build.json."""
    layout = BuildLayout(req.out)
    cfg, reader, count_problems, splits, model = _checked_plan(req, echo)
    lm_model = model.landmark_model()
    config = PrepareConfig.from_pipeline(cfg)
    shard_size = int(cfg["shards"]["size"])
    with BuildLock(layout):
        layout.summary.unlink(missing_ok=True)  # "finished" only once this run has finished
        _record_plan(layout, splits, lm_model)
        fits, fit_summary = {}, None
        if "fit" in cfg["build"]["stages"]:
            reuse_fit_settings(layout, cfg, req, echo)
            fits, fit_summary = run_fit_stage(layout, reader, lm_model, cfg, splits, shard_size, req)
        units = []
        for split, split_items in splits.items():
            for i, chunk in enumerate(shard_chunks(split_items, shard_size)):
                out = layout.shard(split, i)
                fit_file = fits.get((split, i))
                attrs = {
                    "dataset": reader.name,
                    "split": split,
                    "shard_index": i,
                    "pipeline": json.dumps(cfg, sort_keys=True),
                    "package_version": __version__,
                    "model": model.name,
                }
                params = {"stage": "prepare", "cfg": cfg, "model": lm_model.digest(), "version": __version__}
                fp = fingerprint(params, [p for it in chunk for p in it.paths] + ([fit_file] if fit_file else []))
                units.append(Unit("prepare", f"{split}/{layout.shard_name(i)}", fp, [out],
                                  (reader, chunk, lm_model, config, out, attrs, fit_file), n=len(chunk)))
        results = run_units(layout, units, prepare_shard, jobs=req.jobs, backend=req.backend,
                            desc=f"build {cfg['name']}", progress=req.progress, scheduler=req.scheduler)
        remove_stale(layout, "prepare", units, layout.shards())
        summary = _summarise(layout, cfg, reader, model, units, results, count_problems, splits, fit_summary)
        with atomic.atomic_path(layout.mean_dhm) as tmp:  # cheap: rewritten so it follows the crop/DHM settings
            with open(tmp, "wb") as f:
                np.save(f, mean_shape_dhm(lm_model, config))
    n_rej = summary["rejected"]
    if n_rej and req.strict:
        raise BuildError(f"--strict: {n_rej} samples were rejected; see {layout.rejections}")
    return summary


def _cache_model(layout: BuildLayout, lm_model: MorphableModel) -> None:
    try:
        from dhm_data.models.formats.compact import save_compact
    except ImportError:
        return
    save_compact(lm_model, layout.model_cache)


def run_fit_stage(layout, reader, lm_model, cfg, splits, shard_size, req):
    """Run (or resume) the fit units; returns ({(split, shard index): fits
    file}, summary of the fits)."""
    from dhm_data.build.fit_stage import fit_shard, fit_units, load_landmarks_3d
    from dhm_data.fit import FitConfig

    unknown = sorted(set(cfg.get("fit", {})) - set(FitConfig.__dataclass_fields__))
    if unknown:
        raise BuildError(f"{cfg['origin']}: [fit] options {unknown} are not fitting options "
                         f"(known: {', '.join(FitConfig.__dataclass_fields__)})")
    l3 = load_landmarks_3d(req.landmarks_3d) if req.landmarks_3d else None
    units = fit_units(layout, reader, lm_model, cfg, splits, shard_size, l3)
    res = run_units(layout, units, fit_shard, jobs=req.jobs, backend=req.backend, desc="fit-bfm",
                    progress=req.progress, scheduler=req.scheduler)
    remove_stale(layout, "fit", units, sorted((layout.root / "fits").glob("*/shard-*.npz")))
    flagged = [f for u in units for f in res[u.name]["flagged"]]
    atomic.write_bytes(layout.fits_flagged, "".join(json.dumps(r, sort_keys=True) + "\n" for r in flagged).encode())
    summary = {
        "fitted": sum(r["fitted"] for r in res.values()),
        "converged": sum(r["converged"] for r in res.values()),
        "with_3d_estimates": len(l3 or {}),
        "flagged": len(flagged),
        "flagged_list": str(layout.fits_flagged),
        "unreadable": sum(len(r["rejections"]) for r in res.values()),
        "settings": {"fit": cfg.get("fit", {}),
                     "landmarks_3d": str(Path(req.landmarks_3d).resolve()) if req.landmarks_3d else None},
    }
    return {u.meta["key"]: Path(u.outputs[0]) for u in units}, summary


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


def reuse_fit_settings(layout: BuildLayout, cfg: dict, req: BuildRequest, echo) -> None:
    """A ``build`` after ``dhm-data fit-bfm`` on the same folder fits with the
    same settings ([fit] options, 3D landmark estimates) unless it is given
    its own, so its fit units match and are not redone."""
    if req.landmarks_3d is not None or not layout.fit_summary.exists():
        return
    settings = json.loads(layout.fit_summary.read_text()).get("settings") or {}
    if settings.get("landmarks_3d"):
        req.landmarks_3d = Path(settings["landmarks_3d"])
    cfg["fit"] = dict(settings.get("fit", cfg.get("fit", {})))
    echo(f"using the fit settings of the earlier `dhm-data fit-bfm` run ({layout.fit_summary})")


def rejection_kind(rejection: dict) -> str:
    """A rejection reason without its file path and numbers, to count alike
    reasons together ("not a decodable image (N bytes)", ...)."""
    import re

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


def _summarise(layout, cfg, reader, model, units, results, count_problems, splits, fit_summary=None) -> dict:
    rejections = [r for u in units for r in results[u.name]["rejections"]]
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejections)
    atomic.write_bytes(layout.rejections, lines.encode())
    per_split = Counter()
    for u in units:
        per_split[u.name.split("/")[0]] += results[u.name]["written"]
    reasons = Counter(rejection_kind(r) for r in rejections)
    summary = {
        "dataset": reader.name,
        "pipeline": cfg,
        "root": str(reader.root),
        "model": model.name,
        "package_version": __version__,
        "scanned": sum(len(v) for v in splits.values()),
        "written": dict(per_split),
        "rejected": len(rejections),
        "rejection_reasons": dict(reasons),
        "count_mismatches": count_problems,
        "shards": [u.name for u in units],
        "label_sources": dict(sum((Counter(results[u.name]["label_sources"]) for u in units), Counter())),
        "fit": fit_summary,
    }
    atomic.write_json(layout.summary, summary)
    return summary


# ------------------------------------------------------------------ worker side
#: Samples cropped and rendered per block: the block buffers are reused, so
#: their pages stay mapped (first-touching fresh memory cost ~0.3 ms/sample).
BLOCK_SIZE = 32


@dataclass
class _Planned:
    """A sample whose labels passed every check, ready for its pixels."""

    index: int  # position in the shard's item list (rejections are reported in that order)
    item: Item
    sample: Sample
    window: CropWindow
    affine: np.ndarray  # 2x3 source -> crop
    landmarks_3d: np.ndarray | None  # source pixels; posed for the whole shard at once
    label_source: str
    residual: float
    converged: bool


def prepare_shard(payload) -> dict:
    """Worker: prepare every sample of one shard and write the shard file.

    Labels first (everything that can reject a sample without decoding it),
    then the pixels block by block, streamed into the shard: decode (reduced
    by libjpeg where the crop needs fewer pixels), crop, DHM.  Returns
    metadata only: counts, rejections (name, path, reason), label sources.
    """
    import cv2

    from dhm_data.geometry.crop import extract_crop
    from dhm_data.prepare.dhm import QuantisedDHMBlocks
    from dhm_data.formats.images import decode_rgb
    from dhm_data.shards import ShardWriter

    cv2.setNumThreads(1)  # parallelism is across shards; threads inside a worker only contend
    keep_freed_memory()  # large blocks reused, not fresh pages per image (see its docstring)
    reader, items, lm_model, config, out, attrs, fit_file = payload
    fits = _load_fits(fit_file) if fit_file else None
    S = config.crop_size
    rejections, planned = [], []
    for index, item in enumerate(items):
        try:
            planned.append(_plan_sample(index, item, reader, fits, config))
        except (DatasetError, PrepareError) as e:
            rejections.append((index, _rejection(item, e)))
    for p, lm3 in zip(planned, source_landmarks_3d([p.sample for p in planned], lm_model)):
        p.landmarks_3d = lm3
    rows, sources = [], Counter()
    images = np.empty((min(BLOCK_SIZE, len(planned)), S, S, 3), np.uint8)
    dhms = np.zeros_like(images)
    renderer = QuantisedDHMBlocks(S, config.sigma)
    with ShardWriter(out, len(planned), S, storage={"dhm": config.dhm_storage}) as writer:  # 0 rows: an empty shard
        for start in range(0, len(planned), BLOCK_SIZE):
            dhms.fill(0)
            b = 0
            for p in planned[start:start + BLOCK_SIZE]:
                try:
                    image = decode_rgb(p.sample.image_path, p.window.r)
                except DatasetError as e:
                    rejections.append((p.index, _rejection(p.item, e)))
                    continue
                extract_crop(image, p.window, S, out=images[b])
                rows.append(prepare_row(p.sample, p.affine, p.landmarks_3d, p.label_source, p.residual, p.converged))
                sources[p.sample.landmark_source] += 1
                b += 1
            if b:  # DHMs from the stored (float32) crop landmarks, so a re-render from the shard matches
                renderer.render(np.stack([r["landmarks_3d"] for r in rows[-b:]]), dhms[:b])
                writer.append(image=images[:b], dhm=dhms[:b])
        writer.finish(_stack(rows), dict(attrs, n_samples=len(rows), n_rejected=len(rejections)))
    return _shard_result(rows, rejections, sources)


def _plan_sample(index, item, reader, fits, config) -> _Planned:
    """Read and check one sample's labels (no pixels): :class:`DatasetError`
    or :class:`PrepareError` reject it."""
    from dhm_data.geometry.crop import window_affine

    sample = reader.load(item)
    label_source, residual, converged = "label", np.nan, True
    if fits is not None:
        if item.name not in fits:
            raise PrepareError("no fitted parameters for this sample in the fit stage output")
        f = fits[item.name]
        sample.pose_para, sample.shape_para, sample.exp_para = f["pose_para"], f["shape_para"], f["exp_para"]
        label_source, residual, converged = "fitted", f["residual"], f["converged"]
    check_landmarks(sample, sample.image_size)  # every reader gives the size from the header
    pose_parameters(sample)  # neither 3D landmarks nor parameters: rejected here
    window = sample_window(sample, config)
    return _Planned(index, item, sample, window, window_affine(window, config.crop_size), None, label_source,
                    residual, converged)


def _rejection(item, error) -> dict:
    return {"name": item.name, "path": str(item.paths[0]), "stage": "prepare", "reason": str(error)}


def _shard_result(rows, rejections, sources) -> dict:
    return {"written": len(rows), "rejections": [r for _, r in sorted(rejections, key=lambda t: t[0])],
            "label_sources": dict(sources)}


def _stack(rows: list[dict]) -> dict:
    if not rows:
        return {}
    cols = {}
    for k in rows[0]:
        vals = [r[k] for r in rows]
        cols[k] = np.array(vals, dtype=object) if isinstance(vals[0], str) else np.stack([np.asarray(v) for v in vals])
    return cols


def _load_fits(path) -> dict:
    from dhm_data.fit.result_file import read_fits

    f = read_fits(path)
    return {
        str(n): {"pose_para": f["pose_para"][i], "shape_para": f["shape_para"][i], "exp_para": f["exp_para"][i],
                 "residual": float(f["residual"][i]), "converged": bool(f["converged"][i])}
        for i, n in enumerate(f["names"])
    }


def run_fit(req: BuildRequest, echo=print) -> dict:
    """``dhm-data fit-bfm DATASET``: only the fit stage of the pipeline, into
    the build folder, so that a later ``dhm-data build`` of the same pipeline
    and folder finds every fit unit done and goes straight to prepare."""
    layout = BuildLayout(req.out)
    cfg, reader, count_problems, splits, model = _checked_plan(req, echo)
    lm_model = model.landmark_model()
    with BuildLock(layout):
        layout.fit_summary.unlink(missing_ok=True)
        _record_plan(layout, splits, lm_model)
        _, summary = run_fit_stage(layout, reader, lm_model, cfg, splits, int(cfg["shards"]["size"]), req)
        atomic.write_json(layout.fit_summary, summary)
    return summary

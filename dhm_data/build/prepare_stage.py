"""The prepare stage of a build: one HDF5 shard per unit.

Same shape as :mod:`dhm_data.build.fit_stage`: :func:`prepare_units` (the
units, one per shard of samples, with their fingerprints), the worker
:func:`prepare_shard` (labels first -- everything that can reject a sample
without decoding it --, then the pixels block by block: decode, crop, DHM,
streamed into the shard) and :func:`summarise` (counts, rejections, warnings,
label sources over the units).  A worker returns metadata only.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dhm_data import __version__
from dhm_data.build.layout import BuildLayout
from dhm_data.build.manifests import shard_chunks
from dhm_data.build.runner import Unit, fingerprint, keep_freed_memory
from dhm_data.datasets.base import DatasetReader, Item, Sample
from dhm_data.errors import DatasetError, PrepareError
from dhm_data.geometry.crop import CropWindow
from dhm_data.models.morphable import MorphableModel
from dhm_data.prepare.row import (
    MAX_LABEL_PROJECTION_ERROR,
    PrepareConfig,
    check_landmarks,
    label_projection_error,
    pose_parameters,
    prepare_row,
    sample_window,
    source_landmarks_3d,
)

#: Samples cropped and rendered per block: the block buffers are reused, so
#: their pages stay mapped (first-touching fresh memory cost ~0.3 ms/sample).
BLOCK_SIZE = 32
#: the start of a rejection for labels that do not match the model
LABEL_MISMATCH = "the labelled 3DMM parameters do not project onto the 2D labels"


@dataclass(frozen=True)
class ShardJob:
    """What a worker needs for one shard (pickled to it).

    ``strict``: a sample whose image the decoder reports as corrupt (but
    decodes) is rejected instead of kept with a warning.  ``check_labels``:
    reject samples whose labelled parameters do not project onto their 2D
    labels (:func:`dhm_data.prepare.row.label_projection_error` above
    :data:`MAX_LABEL_PROJECTION_ERROR`).
    """

    reader: DatasetReader
    items: tuple
    model: MorphableModel  # the 68-row landmark model
    config: PrepareConfig
    out: Path
    attrs: dict
    fit_file: Path | None = None
    strict: bool = False
    check_labels: bool = True


def prepare_units(layout: BuildLayout, pipeline, reader, lm_model, splits, fits: dict, model_name: str,
                  strict: bool) -> list[Unit]:
    """One unit per shard of each split (``pipeline.shard_size`` samples);
    ``fits``: ``{(split, shard index): fits file}`` of the fit stage."""
    cfg = pipeline.to_dict()
    config = PrepareConfig.from_pipeline(pipeline)
    units = []
    for split, split_items in splits.items():
        for i, chunk in enumerate(shard_chunks(split_items, pipeline.shard_size)):
            out = layout.shard(split, i)
            fit_file = fits.get((split, i))
            attrs = {"dataset": reader.name, "split": split, "shard_index": i,
                     "pipeline": json.dumps(cfg, sort_keys=True), "package_version": __version__, "model": model_name}
            inputs = tuple(p for it in chunk for p in it.paths) + ((fit_file,) if fit_file else ())
            params = {"stage": "prepare", "cfg": cfg, "model": lm_model.digest(), "version": __version__,
                      "strict": strict}
            units.append(Unit("prepare", f"{split}/{layout.shard_name(i)}", fingerprint(params, inputs), [out],
                              ShardJob(reader, tuple(chunk), lm_model, config, out, attrs, fit_file, strict),
                              n=len(chunk), inputs=inputs))
    return units


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


def prepare_shard(job: ShardJob) -> dict:
    """Worker: prepare every sample of one shard and write the shard file.

    Returns metadata only: counts, rejections and warnings (name, path,
    reason), label sources, the largest label projection error.
    """
    import cv2

    from dhm_data.formats.images import decode_rgb_checked
    from dhm_data.geometry.crop import extract_crop
    from dhm_data.prepare.dhm import QuantisedDHMBlocks
    from dhm_data.shards import ShardWriter

    cv2.setNumThreads(1)  # parallelism is across shards; threads inside a worker only contend
    keep_freed_memory()  # large blocks reused, not fresh pages per image (see its docstring)
    fits = _load_fits(job.fit_file) if job.fit_file else None
    S = job.config.crop_size
    rejections, warnings, planned = [], [], []
    for index, item in enumerate(job.items):
        try:
            p = _plan_sample(index, item, job.reader, fits, job.config)
        except (DatasetError, PrepareError) as e:
            rejections.append((index, _rejection(item, e)))
            continue
        warnings.extend((index, _warning(item, w)) for w in p.sample.warnings)
        planned.append(p)
    planned, label_errors = _check_labels(planned, job, rejections)
    for p, lm3 in zip(planned, source_landmarks_3d([p.sample for p in planned], job.model)):
        p.landmarks_3d = lm3
    rows, sources = [], Counter()
    images = np.empty((min(BLOCK_SIZE, len(planned)), S, S, 3), np.uint8)
    dhms = np.zeros_like(images)
    renderer = QuantisedDHMBlocks(S, job.config.sigma)
    with ShardWriter(job.out, len(planned), S, storage={"dhm": job.config.dhm_storage}) as writer:  # 0 rows: empty
        for start in range(0, len(planned), BLOCK_SIZE):
            dhms.fill(0)
            b = 0
            for p in planned[start:start + BLOCK_SIZE]:
                try:
                    image, decoder_said = decode_rgb_checked(p.sample.image_path, p.window.r)
                    if decoder_said and job.strict:
                        raise PrepareError(f"{p.sample.image_path}: --strict: the image decoder reported "
                                           f"damaged data ({'; '.join(decoder_said)})")
                except (DatasetError, PrepareError) as e:
                    rejections.append((p.index, _rejection(p.item, e)))
                    continue
                warnings.extend((p.index, _warning(p.item, f"{p.sample.image_path}: image decoder: {w}"))
                                for w in decoder_said)
                extract_crop(image, p.window, S, out=images[b])
                rows.append(prepare_row(p.sample, p.affine, p.landmarks_3d, p.label_source, p.residual, p.converged))
                sources[p.sample.landmark_source] += 1
                b += 1
            if b:  # DHMs from the stored (float32) crop landmarks, so a re-render from the shard matches
                renderer.render(np.stack([r["landmarks_3d"] for r in rows[-b:]]), dhms[:b])
                writer.append(image=images[:b], dhm=dhms[:b])
        writer.finish(_stack(rows), dict(job.attrs, n_samples=len(rows), n_rejected=len(rejections)))
    return {"written": len(rows), "rejections": _ordered(rejections), "warnings": _ordered(warnings),
            "label_sources": dict(sources), "label_checked": int(np.sum(np.isfinite(label_errors))),
            "label_error_max": float(np.nanmax(label_errors)) if np.isfinite(label_errors).any() else None}


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


def _check_labels(planned: list, job: ShardJob, rejections: list):
    """Reject the samples whose labelled parameters, reconstructed with the
    build's model, land far from their 2D labels; returns the kept samples and
    the errors of all checked ones (NaN where not checked)."""
    labelled = [p for p in planned if p.label_source == "label"] if job.check_labels else []
    errors = label_projection_error([p.sample for p in labelled], job.model)
    bad = {id(p) for p, e in zip(labelled, errors) if e > MAX_LABEL_PROJECTION_ERROR}  # NaN: not checked
    for p, e in zip(labelled, errors):
        if id(p) in bad:
            rejections.append((p.index, _rejection(p.item, PrepareError(
                f"{LABEL_MISMATCH} with {job.model.name} (NME {e:.3f} > {MAX_LABEL_PROJECTION_ERROR}): "
                "the labels belong to another model, or they are damaged"))))
    return [p for p in planned if id(p) not in bad], errors


def _rejection(item, error) -> dict:
    return {"name": item.name, "path": str(item.paths[0]), "stage": "prepare", "reason": str(error)}


def _warning(item, text: str) -> dict:
    return {"name": item.name, "path": str(item.paths[0]), "stage": "prepare", "warning": str(text)}


def _ordered(indexed: list) -> list:
    return [r for _, r in sorted(indexed, key=lambda t: t[0])]


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


def summarise(units: list[Unit], results: dict) -> dict:
    """The prepare stage over all its units: written per split, rejections,
    warnings, label sources and the label check."""
    per_split = Counter()
    for u in units:
        per_split[u.name.split("/")[0]] += results[u.name]["written"]
    errs = [results[u.name].get("label_error_max") for u in units]
    errs = [e for e in errs if e is not None]
    return {
        "written": dict(per_split),
        "rejections": [r for u in units for r in results[u.name]["rejections"]],
        "warnings": [w for u in units for w in results[u.name].get("warnings", [])],
        "label_sources": dict(sum((Counter(results[u.name]["label_sources"]) for u in units), Counter())),
        "label_check": {"checked": sum(results[u.name].get("label_checked", 0) for u in units),
                        "max_error": max(errs) if errs else None, "threshold": MAX_LABEL_PROJECTION_ERROR},
    }

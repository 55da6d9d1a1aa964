"""The prepare stage of a build: one HDF5 shard per unit.

Same shape as :mod:`dhm_data.build.fit_stage`: :func:`prepare_units` (the
units, one per shard of samples, with their fingerprints), the worker
:func:`prepare_shard` and :func:`summarise` (counts, rejections, warnings,
label sources over the units).  The work on a shard's samples is done in
fixed blocks (:mod:`dhm_data.build.prepare_blocks`: labels first --
everything that can reject a sample without decoding it --, then the pixels:
decode, crop, DHM, streamed into the shard), so that
:func:`prepare_shard_helped` -- one shard written by this process while
worker processes prepare its blocks, when a build has fewer shards left than
workers -- writes exactly the shard :func:`prepare_shard` writes.  A worker
returns metadata only.
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
from dhm_data.build.memory import keep_freed_memory
from dhm_data.build.prepare_blocks import (
    BLOCK_SIZE,
    LABEL_MISMATCH,
    BlockRenderer,
    BlockSettings,
    load_fits,
    ordered,
    plan_block,
    plan_block_task,
    stack_rows,
)
from dhm_data.build.runner import Unit, fingerprint
from dhm_data.datasets.base import DatasetReader
from dhm_data.models.morphable import MorphableModel
from dhm_data.prepare.row import MAX_LABEL_PROJECTION_ERROR, PrepareConfig
from dhm_data.shards import ShardWriter

__all__ = ["BLOCK_SIZE", "LABEL_MISMATCH", "ShardJob", "prepare_units", "prepare_shard", "prepare_shard_helped",
           "summarise"]


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

    def settings(self) -> BlockSettings:
        return BlockSettings(self.reader, self.model, self.config, self.strict, self.check_labels)


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


def prepare_shard(job: ShardJob) -> dict:
    """Worker: prepare every sample of one shard and write the shard file.

    Returns metadata only: counts, rejections and warnings (name, path,
    reason), label sources, the largest label projection error.
    """
    keep_freed_memory()  # large blocks reused, not fresh pages per image (see its docstring)
    settings = job.settings()
    fits = load_fits(job.fit_file) if job.fit_file else None
    plans = [plan_block(settings, chunk, start, fits) for start, chunk in _chunks(job.items)]
    pixels = [p for pl in plans for p in pl.pixels]
    S = job.config.crop_size
    images = np.empty((min(BLOCK_SIZE, len(pixels)), S, S, 3), np.uint8)
    dhms = np.empty_like(images)
    renderer = BlockRenderer(job.config, job.strict)

    def rendered():
        for start, block in _chunks(pixels):
            kept, rejections, warnings = renderer.render(block, images, dhms)
            b = int(kept.sum())
            yield start, kept, rejections, warnings, images[:b], dhms[:b]

    return write_shard(job, plans, rendered())


def prepare_shard_helped(job: ShardJob, pool) -> dict:
    """:func:`prepare_shard` with the blocks prepared by ``pool``'s worker
    processes (:class:`dhm_data.build.shard_pool.ShardPool`) while this
    process writes the shard: the same file, for a build with fewer shards
    left than workers."""
    keep_freed_memory()
    settings = job.settings()
    plans = pool.map_ordered(plan_block_task, [(settings, chunk, start, job.fit_file)
                                                for start, chunk in _chunks(job.items)])
    pixels = [p for pl in plans for p in pl.pixels]
    return write_shard(job, plans, pool.render_ordered(job.config, job.strict, list(_chunks(pixels))))


def _chunks(seq):
    return [(i, seq[i:i + BLOCK_SIZE]) for i in range(0, len(seq), BLOCK_SIZE)]


def write_shard(job: ShardJob, plans: list, rendered) -> dict:
    """Write the shard: ``plans`` (:class:`~dhm_data.build.prepare_blocks.BlockPlan`
    per block of items, in order) give the rows; ``rendered`` yields, per
    block of planned samples in order, ``(start, kept, rejections, warnings,
    images, dhms)`` with the kept samples' pixels packed.  Returns the unit's
    metadata."""
    rows = [r for pl in plans for r in pl.rows]
    pixels = [p for pl in plans for p in pl.pixels]
    rejections = [r for pl in plans for r in pl.rejections]
    warnings = [w for pl in plans for w in pl.warnings]
    errors = np.concatenate([pl.label_errors for pl in plans]) if plans else np.zeros(0)
    kept_rows, sources = [], Counter()
    S = job.config.crop_size
    with ShardWriter(job.out, len(pixels), S, storage={"dhm": job.config.dhm_storage}) as writer:  # 0 rows: empty
        for start, kept, rej, warn, images, dhms in rendered:
            rejections.extend(rej)
            warnings.extend(warn)
            for j in np.flatnonzero(kept):
                kept_rows.append(rows[start + j])
                sources[pixels[start + j].source] += 1
            if len(images):
                writer.append(image=images, dhm=dhms)
        writer.finish(stack_rows(kept_rows), dict(job.attrs, n_samples=len(kept_rows), n_rejected=len(rejections)))
    checked = np.isfinite(errors)
    return {"written": len(kept_rows), "rejections": ordered(rejections), "warnings": ordered(warnings),
            "label_sources": dict(sources), "label_checked": int(checked.sum()),
            "label_error_max": float(np.max(errors[checked])) if checked.any() else None}


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

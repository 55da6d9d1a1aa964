"""The fit stage of a build: 3DMM parameters for samples that have no labels.

Same shape as :mod:`dhm_data.build.prepare_stage`: :func:`fit_units`, the
worker :func:`fit_shard` and :func:`summarise`.  One unit per shard of
samples (the same chunks the prepare stage uses): read
the 2D landmarks (and optional 3D landmark estimates), run the batched
:func:`dhm_data.fit.fit` once for the whole shard, and write
``fits/<split>/shard-NNNNN.npz`` (:mod:`dhm_data.fit.result_file`).  The prepare stage
then takes pose / identity / expression from it and flags each sample as
``label_source = "fitted"`` with its residual and convergence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dhm_data import __version__, atomic
from dhm_data.build.manifests import shard_chunks
from dhm_data.build.runner import Unit, fingerprint
from dhm_data.datasets.base import DatasetReader
from dhm_data.errors import DatasetError
from dhm_data.fit import FitConfig, fit, jaw_for_labels
from dhm_data.fit.result_file import flagged_table, read_fits, write_fits
from dhm_data.models.morphable import MorphableModel


def load_landmarks_3d(path) -> dict:
    """Optional 3D landmark estimates: an ``.npz`` with ``names`` (N,) and
    ``landmarks_3d`` (N, 68, 3) in 0-based source pixels (z: depth, larger =
    closer, any offset).  Returns ``{name: (68, 3)}``."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DatasetError(f"{path}: expected an .npz with 'names' (N,) and 'landmarks_3d' (N, 68, 3), "
                               f"found a single array of shape {np.shape(z)}")
        with z:
            names, l3 = z["names"], z["landmarks_3d"]
    except DatasetError:
        raise
    except KeyError as e:
        raise DatasetError(f"{path}: key {e} is missing (expected 'names' (N,) and 'landmarks_3d' (N, 68, 3))") from e
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read as .npz ({e})") from e
    if l3.ndim != 3 or l3.shape[1:] != (68, 3) or len(names) != len(l3):
        raise DatasetError(f"{path}: landmarks_3d has shape {l3.shape} for {len(names)} names, expected (N, 68, 3)")
    return {str(n): l3[i].astype(np.float64) for i, n in enumerate(names)}


@dataclass(frozen=True)
class FitJob:
    """What a worker needs for one shard of fits (pickled to it):
    ``landmarks_3d`` ``{name: (68, 3)}`` estimates for some of its samples."""

    reader: DatasetReader
    items: tuple
    model: MorphableModel  # the 68-row landmark model (with the contour vertices where the model has them)
    config: FitConfig
    out: Path
    landmarks_3d: dict
    jaw_from_labels: bool = True  # [fit] names no jaw mode: take it from the kind of label the samples carry


def fit_units(layout, pipeline, reader, lm_model, splits, landmarks_3d: dict | None = None) -> list[Unit]:
    """One unit per shard of each split (the chunks the prepare stage uses)."""
    cfg = pipeline.to_dict()
    units = []
    for split, items in splits.items():
        for i, chunk in enumerate(shard_chunks(items, pipeline.shard_size)):
            out = layout.fits(split, i)
            l3 = {it.name: landmarks_3d[it.name] for it in chunk if landmarks_3d and it.name in landmarks_3d}
            params = {"stage": "fit", "fit": pipeline.fit_kwargs, "model": lm_model.digest(), "version": __version__,
                      "reader": [pipeline.reader, cfg.get("reader", {})], "l3": sorted(l3)}
            inputs = tuple(p for it in chunk for p in it.paths)
            fp = fingerprint(params, inputs, arrays=[np.ascontiguousarray(l3[k], np.float64) for k in sorted(l3)])
            units.append(Unit("fit", f"{split}/{layout.shard_name(i)}", fp, [out],
                              FitJob(reader, tuple(chunk), lm_model, pipeline.fit, out, l3,
                                     jaw_from_labels="jaw" not in pipeline.fit_kwargs), n=len(chunk),
                              meta={"key": (split, i)}, inputs=inputs))
    return units


def fit_shard(job: FitJob) -> dict:
    """Worker: fit every sample of one shard in one batched solve."""
    names, lm2, lm3, heights, rejections, sources = [], [], [], [], [], []
    for item in job.items:
        try:
            s = job.reader.load(item)
        except DatasetError as e:
            rejections.append({"name": item.name, "path": str(item.paths[0]), "stage": "fit", "reason": str(e)})
            continue
        names.append(item.name)
        lm2.append(s.landmarks_2d)
        lm3.append(job.landmarks_3d.get(item.name, np.full((68, 3), np.nan)))
        heights.append(s.image_size[0])
        sources.append(s.landmark_source)
    if names:
        l3 = np.stack(lm3) if job.landmarks_3d else None
        config, reason = job.config, "the pipeline's [fit] jaw"
        if job.jaw_from_labels:
            jaws = {jaw_for_labels(src, job.config.jaw) for src in sources}
            if len(jaws) == 1:
                config = replace(config, jaw=jaws.pop())
                reason = f"the labels are {sorted(set(sources))[0]!r}"
            else:  # a shard mixing label kinds (never seen): the configured default for all
                reason = f"mixed label kinds {sorted(set(sources))}: the default"
        result = fit(np.stack(lm2), job.model, l3, config, image_height=np.array(heights))
        write_fits(job.out, names, result, image_height=np.array(heights), model_name=job.model.name,
                   used_3d=bool(job.landmarks_3d), jaw_reason=reason)
        n_conv = int(np.sum(result.converged))
    else:
        write_fits(job.out, [], None)
        n_conv = 0
    flagged = flagged_table(read_fits(job.out)) if names else []
    return {"fitted": len(names), "converged": n_conv, "flagged": flagged, "rejections": rejections}


def summarise(layout, units: list[Unit], results: dict, pipeline, landmarks_3d_path, n_estimates: int) -> dict:
    """The fit stage over all its units (also ``fit.json`` of `fit-bfm`);
    writes the flagged list ``fits/flagged.jsonl``."""
    flagged = [f for u in units for f in results[u.name]["flagged"]]
    atomic.write_bytes(layout.fits_flagged, "".join(json.dumps(r, sort_keys=True) + "\n" for r in flagged).encode())
    return {
        "fitted": sum(r["fitted"] for r in results.values()),
        "converged": sum(r["converged"] for r in results.values()),
        "with_3d_estimates": n_estimates,
        "flagged": len(flagged),
        "flagged_list": str(layout.fits_flagged),
        "unreadable": sum(len(r["rejections"]) for r in results.values()),
        "settings": {"fit": pipeline.fit_kwargs,
                     "landmarks_3d": str(Path(landmarks_3d_path).resolve()) if landmarks_3d_path else None},
    }


def earlier_fit_settings(layout, pipeline, landmarks_3d):
    """A ``build`` after ``dhm-data fit-bfm`` on the same folder fits with the
    same settings ([fit] options, 3D landmark estimates) unless it is given
    its own 3D estimates, so its fit units match and are not redone.
    Returns ``(pipeline, landmarks_3d path, used the earlier settings)``: new
    values, nothing is changed in place."""
    if landmarks_3d is not None or not layout.fit_summary.exists():
        return pipeline, landmarks_3d, False
    settings = json.loads(layout.fit_summary.read_text()).get("settings") or {}
    l3 = Path(settings["landmarks_3d"]) if settings.get("landmarks_3d") else None
    return pipeline.with_fit_options(settings.get("fit", pipeline.fit_kwargs)), l3, True

"""The prepare stage's work, in fixed blocks of one shard's samples.

A shard is prepared in two passes over fixed blocks, so that the same code
runs on the same blocks whatever the number of processes (the shard's content
does not depend on ``--jobs``):

1. :func:`plan_block` over :data:`BLOCK_SIZE` consecutive *items* of the
   shard: labels only (read, check, crop window, label check, 3D landmarks,
   the finished row of every kept sample) -- everything that can reject a
   sample without its pixels.  Returns a :class:`BlockPlan` (small: no pixels).
2. :func:`render_block` over :data:`BLOCK_SIZE` consecutive *planned*
   samples: decode, crop, DHM, into caller-given ``(B, S, S, 3)`` uint8
   arrays (a reused buffer in one process, a shared-memory slot when worker
   processes help one shard, :mod:`dhm_data.build.shard_pool`).

A worker returns metadata only; the pixels go straight into the shard writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from dhm_data.build.memory import keep_freed_memory
from dhm_data.datasets.base import DatasetReader, Item
from dhm_data.errors import DatasetError, PrepareError
from dhm_data.fit.result_file import read_fits
from dhm_data.formats.images import decode_checked
from dhm_data.geometry.crop import CropWindow, extract_crop, window_affine
from dhm_data.models.morphable import MorphableModel
from dhm_data.prepare.dhm import QuantisedDHMBlocks
from dhm_data.prepare.row import (
    MAX_LABEL_PROJECTION_ERROR,
    PrepareConfig,
    check_landmarks,
    label_projection_error,
    pose_parameters,
    prepare_rows,
    sample_window,
    source_landmarks_3d,
)

#: Samples per block in both passes.  The pixel buffers of a block are reused
#: (their pages stay mapped: first-touching fresh memory cost ~0.3 ms/sample).
BLOCK_SIZE = 32
#: the start of a rejection for labels that do not match the model
LABEL_MISMATCH = "the labelled 3DMM parameters do not project onto the 2D labels"


@dataclass(frozen=True)
class BlockSettings:
    """What both passes need besides the samples (pickled to workers once per task: small)."""

    reader: DatasetReader
    model: MorphableModel  # the 68-row landmark model
    config: PrepareConfig
    strict: bool = False
    check_labels: bool = True


@dataclass(frozen=True)
class PixelJob:
    """One kept sample's pixel work: decode ``image_path`` at the window's
    reduction, crop ``window``, render the DHM of ``landmarks_3d`` ``(68, 3)``
    float32 crop pixels (the row's, so a re-render from the shard matches)."""

    index: int  # position in the shard's item list
    name: str
    path: str  # the item's first path (named in rejections)
    image_path: Path
    window: CropWindow
    landmarks_3d: np.ndarray
    source: str  # the sample's landmark source (counted in the summary)


@dataclass
class BlockPlan:
    """:func:`plan_block`'s result: the kept samples' rows and pixel jobs (same
    order), rejections and warnings as ``(index, record)``, each checked
    sample's label projection error (NaN where not checked), label sources."""

    rows: list = field(default_factory=list)
    pixels: list = field(default_factory=list)
    rejections: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    label_errors: np.ndarray = field(default_factory=lambda: np.zeros(0))


def plan_block(settings: BlockSettings, items, start: int, fits: dict | None = None) -> BlockPlan:
    """Pass 1 over ``items`` (positions ``start ...`` of the shard)."""
    out = BlockPlan()
    kept = []
    for index, item in enumerate(items, start):
        try:
            s = _load_sample(item, settings.reader, fits, settings.config)
        except (DatasetError, PrepareError) as e:
            out.rejections.append((index, rejection(item, e)))
            continue
        out.warnings.extend((index, warning(item, w)) for w in s[0].warnings)
        kept.append((index, item) + s)
    kept, out.label_errors = _check_labels(kept, settings, out.rejections)
    if not kept:
        return out
    samples = [k[2] for k in kept]
    lm3 = source_landmarks_3d(samples, settings.model)
    out.rows = prepare_rows(samples, [window_affine(k[3], settings.config.crop_size) for k in kept], lm3,
                            [k[4] for k in kept], [k[5] for k in kept], [k[6] for k in kept])
    out.pixels = [PixelJob(k[0], k[1].name, str(k[1].paths[0]), k[2].image_path, k[3], r["landmarks_3d"],
                           k[2].landmark_source) for k, r in zip(kept, out.rows)]
    return out


def _load_sample(item: Item, reader: DatasetReader, fits, config: PrepareConfig):
    """``(sample, crop window, label source, fit residual, converged)``: one
    sample's labels read and checked (no pixels); :class:`DatasetError` or
    :class:`PrepareError` reject it."""
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
    return sample, sample_window(sample, config), label_source, residual, converged


def _check_labels(kept: list, settings: BlockSettings, rejections: list):
    """Reject the samples whose labelled parameters, reconstructed with the
    build's model, land far from their 2D labels; returns the kept samples and
    the errors of all samples that reached the check (NaN where not checked)."""
    labelled = [k for k in kept if k[4] == "label"] if settings.check_labels else []
    errors = label_projection_error([k[2] for k in labelled], settings.model)
    full = np.full(len(kept), np.nan)
    pos = {id(k): i for i, k in enumerate(kept)}
    bad = set()
    for k, e in zip(labelled, errors):
        full[pos[id(k)]] = e
        if e > MAX_LABEL_PROJECTION_ERROR:  # NaN: not checked
            bad.add(id(k))
            rejections.append((k[0], rejection(k[1], PrepareError(
                f"{LABEL_MISMATCH} with {settings.model.name} (NME {e:.3f} > {MAX_LABEL_PROJECTION_ERROR}): "
                "the labels belong to another model, or they are damaged"))))
    return [k for k in kept if id(k) not in bad], full


class BlockRenderer:
    """Pass 2 in one process: decoder, crop and DHM renderer state reused
    across blocks (the DHM renderer's buffers, OpenCV's thread setting)."""

    def __init__(self, config: PrepareConfig, strict: bool = False):

        cv2.setNumThreads(1)  # parallelism is across processes; threads inside one only contend
        self.config, self.strict = config, strict
        self.dhm = QuantisedDHMBlocks(config.crop_size, config.sigma)

    def render(self, pixels: list, images: np.ndarray, dhms: np.ndarray):
        """Decode, crop and render ``pixels`` (at most ``len(images)``) into
        ``images[:b]`` and ``dhms[:b]`` ``(B, S, S, 3)`` uint8, ``b`` the
        samples that decoded, packed in order.  Returns ``(kept, rejections,
        warnings)``: ``kept`` ``(len(pixels),)`` bool, the others as
        ``(index, record)``."""

        S = self.config.crop_size
        kept = np.zeros(len(pixels), bool)
        rejections, warnings = [], []
        b = 0
        for i, p in enumerate(pixels):
            try:
                image, said = decode_checked(p.image_path, p.window.r, rgb=False)  # BGR: converted after the crop
                if said and self.strict:
                    raise PrepareError(f"{p.image_path}: --strict: the image decoder reported damaged data "
                                       f"({'; '.join(said)})")
            except (DatasetError, PrepareError) as e:
                rejections.append((p.index, {"name": p.name, "path": p.path, "stage": "prepare", "reason": str(e)}))
                continue
            warnings.extend((p.index, {"name": p.name, "path": p.path, "stage": "prepare",
                                       "warning": f"{p.image_path}: image decoder: {w}"}) for w in said)
            extract_crop(image, p.window, S, out=images[b])
            cv2.cvtColor(images[b], cv2.COLOR_BGR2RGB, dst=images[b])  # per channel work above: equal to RGB first
            kept[i] = True
            b += 1
        dhms[:b] = 0
        if b:
            self.dhm.render(np.stack([p.landmarks_3d for p, k in zip(pixels, kept) if k]), dhms[:b])
        return kept, rejections, warnings


def rejection(item, error) -> dict:
    return {"name": item.name, "path": str(item.paths[0]), "stage": "prepare", "reason": str(error)}


def warning(item, text: str) -> dict:
    return {"name": item.name, "path": str(item.paths[0]), "stage": "prepare", "warning": str(text)}


def ordered(indexed: list) -> list:
    """Records of ``(index, record)`` pairs in sample order (stable)."""
    return [r for _, r in sorted(indexed, key=lambda t: t[0])]


def stack_rows(rows: list[dict]) -> dict:
    """Rows (dicts of per-sample values) -> columns (first axis = sample)."""
    if not rows:
        return {}
    cols = {}
    for k in rows[0]:
        vals = [r[k] for r in rows]
        cols[k] = np.array(vals, dtype=object) if isinstance(vals[0], str) else np.stack([np.asarray(v) for v in vals])
    return cols


def plan_block_task(settings: BlockSettings, chunk, start: int, fit_file) -> BlockPlan:
    """:func:`plan_block` in a worker process (the fits file read once per process)."""
    keep_freed_memory()
    fits = None
    if fit_file is not None:
        if _FITS_CACHE.get("path") != fit_file:
            _FITS_CACHE.update(path=fit_file, fits=load_fits(fit_file))
        fits = _FITS_CACHE["fits"]
    return plan_block(settings, chunk, start, fits)


_FITS_CACHE: dict = {}


def load_fits(path) -> dict:
    """``{sample name: fitted parameters, residual, converged}`` of a fit-stage file."""
    f = read_fits(path)
    return {
        str(n): {"pose_para": f["pose_para"][i], "shape_para": f["shape_para"][i], "exp_para": f["exp_para"][i],
                 "residual": float(f["residual"][i]), "converged": bool(f["converged"][i])}
        for i, n in enumerate(f["names"])
    }

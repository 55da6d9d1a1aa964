"""The landmark metrics: 2D NME, 3D NME, yaw bins, CED, AUC and failure rate.

Pure numpy on arrays; no file I/O.  Each function's definition is quoted from
:mod:`dhm_data.evaluation.protocols` (the one source of the words the report and
``--help`` use).  Implementation notes that are not definitions:

* NME is translation-invariant only if both arrays use the same pixel
  convention: a 1-based prediction against 0-based ground truth adds a (1, 1) px
  offset to every point (about 1.41 px / d, e.g. +0.9 % NME on a 160 px face).
* Yaw bins on the full AFLW2000-3D set hold 1,312 / 383 / 305 images, the seven
  images with ``|yaw| > 90`` in the last bin.  The balanced mean and its std are
  exactly 3DDFA's ``benchmark_aflw2000.ana`` (``np.mean`` / ``np.std`` of the
  three bin means); 3DDFA casts per-image NMEs to float32 (the ``3ddfa.float32``
  quirk, applied only under its protocols).
* ``ls3dw`` AUC: the step of ``linspace(0, 1, 1000)`` is 1/999, so the 70
  samples of 7 % span ``[0, 69/999]``.  ``menpofit`` AUC keeps menpofit's float
  ``arange`` (702 samples ending at 0.0701 for t = 0.07); SciPy >= 1.11 integrates
  an even number of samples with Cartwright's correction, older menpofit used
  ``simps(even='avg')``: differences of order 1e-5.
* A failed row (``--nan-as-failure``) has NME ``+inf``: it counts in CED, AUC and
  failure rate as above every threshold and is left out of the means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from dhm_data.errors import EvaluationError, PredictionError
from dhm_data.evaluation.protocols import DEFINITIONS, QUIRKS, YAW_BIN_LABELS, YAW_EDGES, defined_by
from dhm_data.evaluation.scores import EvaluationReport, finite_rows
from dhm_data.geometry import landmark_error
from dhm_data.geometry.landmark_error import box_size
from dhm_data.geometry.landmarks68 import landmark_array

N_LANDMARKS = 68
METRICS = ("nme", "nme-3d")
DEFAULT_THRESHOLD = 0.07
#: failure threshold of the seed paper (Fast DHM)
SEED_FAILURE_THRESHOLD = 0.06
AUC_VARIANTS = ("ls3dw", "menpofit")
NME_3D_VARIANTS = ("2dasl", "no-shift")
MENPOFIT_STEP = 1e-4


# ------------------------------------------------------------------ NME
def _check_boxes(gt: np.ndarray) -> None:
    d = box_size(gt)
    if np.any(~(d > 0)):
        idx = np.flatnonzero(~(np.atleast_1d(d) > 0))
        raise EvaluationError(f"{len(idx)} ground-truth landmark boxes have zero area or NaN "
                              f"(indices {', '.join(map(str, idx[:10]))}); NME is undefined for them")


@defined_by("nme")
def nme(pred, gt) -> np.ndarray:
    """Per-image 2D NME, ``(...)`` float64 (a fraction, not %).

    ``pred``, ``gt``: ``(..., 68, 2|3)`` in the same pixel convention; only
    x, y are compared.  Raises :class:`EvaluationError` if a ground-truth box
    has zero area (the NME would be infinite)."""
    p = np.asarray(pred, np.float64)[..., :2]
    g = np.asarray(gt, np.float64)[..., :2]
    if p.shape != g.shape:
        raise EvaluationError(f"prediction shape {p.shape[:-1]}x2 does not match ground truth {g.shape[:-1]}x2")
    _check_boxes(g)
    return landmark_error.nme(p, g)


@defined_by("nme-3d.2dasl", "nme-3d.no-shift")
def nme_3d(pred, gt, variant: str = "2dasl") -> np.ndarray:
    """Per-image 3D NME, ``(...)`` float64 (a fraction), never mixed with :func:`nme`.

    ``pred``, ``gt``: ``(..., 68, 3)``, x, y in the same pixel convention, z in
    the same units (pixels); ``variant``: ``"2dasl"`` (z shifted to a minimum
    of 0 in each array) or ``"no-shift"``."""
    if variant not in NME_3D_VARIANTS:
        raise EvaluationError(f"unknown 3D NME variant {variant!r}; known: {', '.join(NME_3D_VARIANTS)}")
    p = np.array(pred, np.float64)
    g = np.array(gt, np.float64)
    if p.shape != g.shape or p.shape[-1] != 3:
        raise EvaluationError(f"3D NME needs (..., 68, 3) arrays of one shape; found {p.shape} and {g.shape}")
    if variant == "2dasl":
        p[..., 2] -= p[..., 2].min(axis=-1, keepdims=True)
        g[..., 2] -= g[..., 2].min(axis=-1, keepdims=True)
    _check_boxes(g)
    return landmark_error.nme(p, g, dims=3)


# ------------------------------------------------------------------ yaw bins
@defined_by("yaw_bins")
def yaw_bin_index(yaw_deg) -> np.ndarray:
    """Bin of each image by ``|yaw|`` (degrees): 0 = [0,30], 1 = (30,60],
    2 = (60,inf).  ``(N,)`` int64."""
    a = np.abs(np.asarray(yaw_deg, np.float64))
    if np.any(np.isnan(a)):
        raise EvaluationError(f"{int(np.isnan(a).sum())} yaw values are NaN; cannot assign yaw bins")
    return (a > YAW_EDGES[0]).astype(np.int64) + (a > YAW_EDGES[1])


def bin_counts(yaw_deg) -> dict:
    """``{bin label: number of images}``."""
    idx = yaw_bin_index(yaw_deg)
    return {lab: int(np.sum(idx == k)) for k, lab in enumerate(YAW_BIN_LABELS)}


@dataclass
class BinStats:
    """NME statistics of one yaw bin (fractions; ``std`` is ddof=0)."""

    label: str
    lower: float
    upper: float
    count: int
    mean: float | None
    std: float | None


def yaw_bin_stats(errors, yaw_deg) -> list[BinStats]:
    """Mean and std (ddof=0) of the per-image NME in each yaw bin (None for an empty bin).

    Non-finite NMEs (failed rows) are left out of the bin's mean and std but
    counted in ``count``."""
    e = np.asarray(errors, np.float64)
    idx = yaw_bin_index(yaw_deg)
    if idx.shape != e.shape:
        raise EvaluationError(f"{len(idx)} yaw values for {len(e)} NMEs")
    edges = (0.0,) + YAW_EDGES + (float("inf"),)
    out = []
    for k, lab in enumerate(YAW_BIN_LABELS):
        in_bin = idx == k
        sel = e[in_bin & np.isfinite(e)]
        out.append(BinStats(lab, edges[k], edges[k + 1], int(in_bin.sum()),
                            float(sel.mean()) if sel.size else None, float(sel.std()) if sel.size else None))
    return out


@defined_by("balanced_mean", "balanced_std")
def balanced_mean(bins: Sequence[BinStats]) -> tuple[float | None, float | None]:
    """(mean, population std ddof=0) of the bin means; (None, None) if a bin is empty."""
    means = [b.mean for b in bins]
    if any(m is None for m in means):
        return None, None
    m = np.asarray(means, np.float64)
    return float(m.mean()), float(m.std())


# ------------------------------------------------------------------ CED / AUC / failure
@defined_by("ced")
def ced(errors, x) -> np.ndarray:
    """Cumulative error distribution: fraction of ``errors`` ``<= x`` for each x."""
    e = np.sort(np.asarray(errors, np.float64).ravel())
    return np.searchsorted(e, np.asarray(x, np.float64), side="right") / max(len(e), 1)


@defined_by("failure_rate")
def failure_rate(errors, threshold: float) -> float:
    """Fraction of images with NME strictly greater than ``threshold``."""
    e = np.asarray(errors, np.float64)
    return float(np.mean(e > threshold))


@defined_by("auc.ls3dw")
def auc_ls3dw(errors, threshold: float = DEFAULT_THRESHOLD) -> float:
    """AUC of the LS3D-W paper, in [0, 1]."""
    k = int(round(threshold * 1000))
    if not 1 <= k <= 1000:
        raise EvaluationError(f"ls3dw AUC: threshold {threshold} gives {k} bins; expected 0.001 <= threshold <= 1")
    axes = np.linspace(0, 1, 1000)[:k]
    e = np.sort(np.asarray(errors, np.float64).ravel())
    curve = np.searchsorted(e, axes, side="left") / len(e)   # count(e < a)
    return float(curve.mean())


def menpofit_axis(threshold: float, step: float = MENPOFIT_STEP) -> np.ndarray:
    """The x axis menpofit integrates on: ``np.arange(0, t + step, step)``."""
    return np.arange(0.0, threshold + step, step)


@defined_by("auc.menpofit")
def auc_menpofit(errors, threshold: float = DEFAULT_THRESHOLD, step: float = MENPOFIT_STEP) -> tuple[float, float]:
    """menpofit's (AUC, failure rate); its failure rate is ``1 - ced[-1]``."""
    from scipy.integrate import simpson  # reason: scipy.integrate is only needed for this variant

    if not threshold > 0 or not step > 0:
        raise EvaluationError(f"menpofit AUC: threshold ({threshold}) and step ({step}) must be positive")
    x = menpofit_axis(threshold, step)
    c = ced(errors, x)
    return float(simpson(c, x=x) / threshold), float(1.0 - c[-1])


def auc(errors, threshold: float = DEFAULT_THRESHOLD, variant: str = "ls3dw", step: float = MENPOFIT_STEP) -> float:
    """AUC at ``threshold`` with the named ``variant`` (``ls3dw`` or ``menpofit``)."""
    if variant == "ls3dw":
        return auc_ls3dw(errors, threshold)
    if variant == "menpofit":
        return auc_menpofit(errors, threshold, step)[0]
    raise EvaluationError(f"unknown AUC variant {variant!r}; known: {', '.join(AUC_VARIANTS)}")


# ------------------------------------------------------------------ one set of predictions
def evaluate(pred, gt, yaw_deg=None, *, names=None, label: str = "predictions",
             threshold: float = DEFAULT_THRESHOLD, auc_variant: str = "ls3dw", menpofit_step: float = MENPOFIT_STEP,
             seed_failure_threshold: float = SEED_FAILURE_THRESHOLD, metric: str = "nme",
             nme_3d_variant: str = "2dasl", nan_as_failure: bool = False, quirks: Sequence[str] = ()) -> EvaluationReport:
    """Score ``pred`` against ``gt`` (same order, same pixel convention).

    Args:
        pred: ``(N, 68, 2|3)`` or ``(N, 2|3, 68)`` predicted landmarks (z ignored for
            ``metric="nme"``, required for ``"nme-3d"``); NaN rows need ``nan_as_failure``.
        gt: ground truth in the same layouts, e.g. ``(N, 68, 2)`` 0-based pixels.
        yaw_deg: ``(N,)`` signed yaw in degrees (Pose_Para) for the yaw bins, or None.
        names: ``(N,)`` image names for the report (default ``#0000`` ...).
        threshold: AUC / failure threshold (fraction, default 0.07).
        auc_variant: ``"ls3dw"`` (default) or ``"menpofit"``.
        metric: ``"nme"`` (2D) or ``"nme-3d"`` (``nme_3d_variant`` ``"2dasl"`` or ``"no-shift"``).
        nan_as_failure: score rows holding NaN / inf as failures (NME ``+inf``).
        quirks: names of :data:`~dhm_data.evaluation.protocols.QUIRKS` to reproduce
            (``3ddfa.float32``, ``dad3d.failure-below``).

    Usable from a training loop on numpy arrays; returns an
    :class:`EvaluationReport` (``report.headline``, ``report.to_dict()``).
    """
    if metric not in METRICS:
        raise EvaluationError(f"unknown landmark metric {metric!r}; known: {', '.join(METRICS)}")
    if auc_variant not in AUC_VARIANTS:
        raise EvaluationError(f"unknown AUC variant {auc_variant!r}; known: {', '.join(AUC_VARIANTS)}")
    unknown = [q for q in quirks if q not in QUIRKS]
    if unknown:
        raise EvaluationError(f"unknown quirk(s) {', '.join(unknown)}; known: {', '.join(QUIRKS)}")
    dims = 2 if metric == "nme" else 3
    g = landmark_array(gt, "ground truth", dims=dims, error=EvaluationError)
    p = landmark_array(pred, label, dims=dims, error=PredictionError)
    if len(p) != len(g):
        diff = len(p) - len(g)
        raise PredictionError(f"{label}: {len(p)} images, the ground truth has {len(g)} "
                              f"({abs(diff)} {'too many' if diff > 0 else 'missing'})")
    if len(g) == 0:
        raise EvaluationError("no images to evaluate")
    if not np.isfinite(g).all():
        raise EvaluationError(f"ground truth: {int((~np.isfinite(g).all(axis=(1, 2))).sum())} images hold NaN/inf")
    ok = finite_rows(p, label, nan_as_failure)
    errors = np.full(len(g), np.inf)
    if ok.any():
        errors[ok] = nme(p[ok], g[ok]) if metric == "nme" else nme_3d(p[ok], g[ok], nme_3d_variant)
    if "3ddfa.float32" in quirks:
        errors = errors.astype(np.float32).astype(np.float64)
    if names is None:
        names = np.array([f"#{i:04d}" for i in range(len(g))])
    names = np.asarray(names, dtype=str)
    if len(names) != len(g):
        raise EvaluationError(f"{len(names)} names for {len(g)} images")
    bins = bmean = bstd = yaw = None
    if yaw_deg is not None:
        yaw = np.asarray(yaw_deg, np.float64).ravel()
        if len(yaw) != len(g):
            raise EvaluationError(f"{len(yaw)} yaw values for {len(g)} images")
        bins = yaw_bin_stats(errors, yaw)
        bmean, bstd = balanced_mean(bins)
    if auc_variant == "ls3dw":
        a, vfr = auc_ls3dw(errors, threshold), failure_rate(errors, threshold)
    else:
        a, vfr = auc_menpofit(errors, threshold, menpofit_step)
    fin = errors[np.isfinite(errors)]
    extra = {}
    if "dad3d.failure-below" in quirks:
        extra["dad3d_fr_below"] = float(np.mean(errors < threshold))
    keys = ("nme", "yaw_bins", "balanced_mean", "balanced_std", "overall_mean", "overall_std", "ced", "failure_rate")
    protocol = {k: DEFINITIONS[k] for k in keys}
    if metric == "nme-3d":
        protocol["nme"] = DEFINITIONS[f"nme-3d.{nme_3d_variant}"]
    protocol[f"auc.{auc_variant}"] = DEFINITIONS[f"auc.{auc_variant}"]
    return EvaluationReport(
        label=label, names=names, nme=errors, yaw_deg=yaw, bins=bins, balanced_mean=bmean, balanced_std=bstd,
        overall_mean=float(fin.mean()) if fin.size else float("nan"),
        overall_std=float(fin.std()) if fin.size else float("nan"),
        median=float(np.median(fin)) if fin.size else float("nan"),
        threshold=float(threshold), auc=a, auc_variant=auc_variant, failure_rate=failure_rate(errors, threshold),
        variant_failure_rate=vfr, seed_failure_threshold=float(seed_failure_threshold),
        seed_failure_rate=failure_rate(errors, seed_failure_threshold),
        menpofit_step=float(menpofit_step) if auc_variant == "menpofit" else None, protocol=protocol,
        metric=metric, nme_3d_variant=nme_3d_variant if metric == "nme-3d" else None, extra=extra)

"""NME / CED / AUC evaluation of 68-point face alignment, the published protocol.

Pure numpy on arrays; no file I/O (see :mod:`dhm_data.evaluate.ground_truth` for the
ground truth and prediction files, :mod:`dhm_data.evaluate.plots` for the CED plot and
``dhm-eval`` for the command).  The protocol (CONVENTIONS.md section 6):

NME
    per image, the mean over the 68 points of the 2D Euclidean distance between
    prediction and ground truth, divided by ``d = sqrt(w * h)`` of the tight
    box around the 68 ground-truth points.  Only x, y are compared (a z column
    is ignored).  A fraction: multiply by 100 for the "%" of the papers.  NME is
    translation-invariant only if both arrays use the same pixel convention: a
    1-based prediction against 0-based ground truth adds a (1, 1) px offset to
    every point (about 1.41 px / d, e.g. +0.9 % NME on a 160 px face).
Yaw bins (AFLW2000-3D)
    by ``|yaw|`` in degrees (``Pose_Para[1]``): ``[0, 30]``, ``(30, 60]``,
    ``(60, inf)``; 1,312 / 383 / 305 images on the full set, the seven images
    with ``|yaw| > 90`` (wrap-around) in the last bin.  The headline "mean" is
    the *balanced* mean, the mean of the three bin means, and the "std" beside
    it is the population standard deviation (``ddof=0``) of the three bin
    means: exactly 3DDFA's ``benchmark_aflw2000.ana`` (``np.mean`` /
    ``np.std`` of ``[mean_1, mean_2, mean_3]``).  The *overall* mean over images
    (and its ``ddof=0`` std over images) is always reported beside it,
    labelled.  3DDFA casts the per-image NMEs to float32; we keep float64
    (differences below 1e-7).
CED
    ``ced(x)`` = fraction of images with ``NME <= x``.
AUC at a threshold ``t`` (default 0.07), two named variants:

    ``ls3dw``  (Bulat & Tzimiropoulos 2017, ``utils.calculateMetrics`` of
        2D-and-3D-face-alignment): ``axes = linspace(0, 1, 1000)``, curve
        ``c_i = mean(NME < axes_i)`` (strict ``<``), AUC = mean of the first
        ``k = round(1000 t)`` values (``k = 70`` for 7 %).  Note the step is
        1/999, so the 70 samples span ``[0, 69/999] = [0, 0.06907]``; the
        generalisation to other thresholds keeps that definition.
    ``menpofit`` (``menpofit.error.stats.area_under_curve_and_failure_rate``):
        ``x = np.arange(0, t + step, step)`` (``step`` default 1e-4), curve
        ``mean(NME <= x)``, AUC = ``scipy.integrate.simpson(ced, x=x) / t``.
        The float ``arange`` is kept as menpofit builds it: for ``t = 0.07`` it
        has 702 samples ending at 0.0701.  menpofit's own failure rate is
        ``1 - ced[-1]`` (reported as ``variant_failure_rate``).  SciPy >= 1.11
        integrates an even number of samples with Cartwright's correction;
        menpofit under older SciPy used ``simps(even='avg')``: differences are
        of order 1e-5.

Failure rate
    fraction of images with ``NME > t`` (strictly greater; an image exactly at
    the threshold is not a failure), at the chosen threshold and at the seed
    paper's 6 %.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from dhm_data.errors import EvaluationError, PredictionError

N_LANDMARKS = 68
#: |yaw| bin edges in degrees: [0, 30], (30, 60], (60, inf)
YAW_EDGES = (30.0, 60.0)
YAW_BIN_LABELS = ("[0,30]", "(30,60]", "(60,inf)")
DEFAULT_THRESHOLD = 0.07
#: failure threshold of the seed paper (Fast DHM)
SEED_FAILURE_THRESHOLD = 0.06
AUC_VARIANTS = ("ls3dw", "menpofit")
MENPOFIT_STEP = 1e-4

PROTOCOL_TEXT = {
    "nme": "per image: mean over the 68 points of the 2D Euclidean error / sqrt(w*h) of the tight box of the 68 "
           "ground-truth points (x, y only; z ignored); a fraction (x100 = %)",
    "coordinates": "0-based pixels of the source image (top-left pixel centre = (0, 0))",
    "yaw_bins": "|yaw| in degrees from Pose_Para[1]: [0,30], (30,60], (60,inf); |yaw| > 90 falls in the last bin",
    "balanced_mean": "mean of the per-bin mean NMEs (the headline 'mean' of the AFLW2000-3D tables)",
    "balanced_std": "population std (ddof=0) of the per-bin mean NMEs, as 3DDFA benchmark_aflw2000.ana",
    "overall_mean": "mean NME over all images",
    "overall_std": "population std (ddof=0) of the per-image NMEs",
    "ced": "fraction of images with NME <= x",
    "failure_rate": "fraction of images with NME > threshold (strict)",
    "auc.ls3dw": "Bulat & Tzimiropoulos 2017: axes = linspace(0,1,1000); c_i = mean(NME < axes_i) (strict); "
                 "AUC = mean of the first round(1000*threshold) c_i (70 for 7%)",
    "auc.menpofit": "menpofit area_under_curve_and_failure_rate: x = arange(0, t+step, step); c = mean(NME <= x); "
                    "AUC = scipy.integrate.simpson(c, x=x) / t",
}


# ------------------------------------------------------------------ shapes
def as_landmarks_2d(points, what: str = "predictions", n_expected: int | None = None) -> np.ndarray:
    """Bring landmarks to ``(N, 68, 2)`` float64 (x, y).

    Accepted: ``(N, 68, 2)``, ``(N, 68, 3)`` (z dropped), ``(N, 2, 68)`` and
    ``(N, 3, 68)`` (the 3DDFA ``pts68`` layout; z dropped).  Raises
    :class:`PredictionError` naming ``what``, the shape found and, when
    ``n_expected`` is given, the count expected; and for NaN/inf, how many
    images and which ones (first 10 indices).
    """
    a = np.asarray(points)
    if a.dtype.kind not in "fiu":
        raise PredictionError(f"{what}: expected a numeric array, found dtype {a.dtype}")
    if a.ndim != 3:
        raise PredictionError(f"{what}: expected shape (N, 68, 2), (N, 68, 3) or (N, 2, 68), found {a.shape}")
    if a.shape[1] == N_LANDMARKS and a.shape[2] in (2, 3):
        out = a[:, :, :2]
    elif a.shape[2] == N_LANDMARKS and a.shape[1] in (2, 3):
        out = np.swapaxes(a[:, :2, :], 1, 2)
    else:
        raise PredictionError(f"{what}: expected shape (N, 68, 2), (N, 68, 3) or (N, 2, 68), found {a.shape}"
                              + (" (not 68 landmarks)" if N_LANDMARKS not in a.shape[1:] else ""))
    out = np.ascontiguousarray(out, dtype=np.float64)
    if n_expected is not None and len(out) != n_expected:
        diff = len(out) - n_expected
        raise PredictionError(
            f"{what}: {len(out)} images, the ground truth has {n_expected} "
            f"({abs(diff)} {'too many' if diff > 0 else 'missing'})")
    bad = ~np.isfinite(out).all(axis=(1, 2))
    if bad.any():
        idx = np.flatnonzero(bad)
        raise PredictionError(
            f"{what}: {len(idx)} of {len(out)} images hold NaN/inf coordinates "
            f"(indices {', '.join(map(str, idx[:10]))}{', ...' if len(idx) > 10 else ''})")
    return out


# ------------------------------------------------------------------ NME
def box_size(gt) -> np.ndarray:
    """``sqrt(w * h)`` of the tight box of the ground-truth points, ``(...)``.

    ``gt``: ``(..., 68, 2|3)`` pixels; only x, y are used."""
    g = np.asarray(gt, np.float64)[..., :2]
    wh = g.max(axis=-2) - g.min(axis=-2)
    return np.sqrt(wh[..., 0] * wh[..., 1])


def nme(pred, gt) -> np.ndarray:
    """Per-image NME, ``(...)`` float64 (a fraction, not %).

    ``pred``, ``gt``: ``(..., 68, 2|3)`` in the same pixel convention; only
    x, y are compared.  Raises :class:`EvaluationError` if a ground-truth box
    has zero area (the NME would be infinite)."""
    p = np.asarray(pred, np.float64)[..., :2]
    g = np.asarray(gt, np.float64)[..., :2]
    if p.shape != g.shape:
        raise EvaluationError(f"prediction shape {p.shape[:-1]}x2 does not match ground truth {g.shape[:-1]}x2")
    d = box_size(g)
    if np.any(~(d > 0)):
        idx = np.flatnonzero(~(np.atleast_1d(d) > 0))
        raise EvaluationError(f"{len(idx)} ground-truth landmark boxes have zero area or NaN "
                              f"(indices {', '.join(map(str, idx[:10]))}); NME is undefined for them")
    err = np.sqrt(((p - g) ** 2).sum(axis=-1)).mean(axis=-1)
    return err / d


# ------------------------------------------------------------------ yaw bins
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
    """Mean and std (ddof=0) of the per-image NME in each yaw bin (None for an empty bin)."""
    e = np.asarray(errors, np.float64)
    idx = yaw_bin_index(yaw_deg)
    if idx.shape != e.shape:
        raise EvaluationError(f"{len(idx)} yaw values for {len(e)} NMEs")
    edges = (0.0,) + YAW_EDGES + (float("inf"),)
    out = []
    for k, lab in enumerate(YAW_BIN_LABELS):
        sel = e[idx == k]
        out.append(BinStats(lab, edges[k], edges[k + 1], int(sel.size),
                            float(sel.mean()) if sel.size else None, float(sel.std()) if sel.size else None))
    return out


def balanced_mean(bins: Sequence[BinStats]) -> tuple[float | None, float | None]:
    """(mean, population std ddof=0) of the bin means; (None, None) if a bin is empty."""
    means = [b.mean for b in bins]
    if any(m is None for m in means):
        return None, None
    m = np.asarray(means, np.float64)
    return float(m.mean()), float(m.std())


# ------------------------------------------------------------------ CED / AUC / failure
def ced(errors, x) -> np.ndarray:
    """Cumulative error distribution: fraction of ``errors`` ``<= x`` for each x."""
    e = np.sort(np.asarray(errors, np.float64).ravel())
    return np.searchsorted(e, np.asarray(x, np.float64), side="right") / max(len(e), 1)


def failure_rate(errors, threshold: float) -> float:
    """Fraction of images with NME strictly greater than ``threshold``."""
    e = np.asarray(errors, np.float64)
    return float(np.mean(e > threshold))


def auc_ls3dw(errors, threshold: float = DEFAULT_THRESHOLD) -> float:
    """AUC of the LS3D-W paper: mean of the first ``round(1000 t)`` values of
    ``mean(NME < linspace(0, 1, 1000)_i)`` (strict ``<``); in [0, 1]."""
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


def auc_menpofit(errors, threshold: float = DEFAULT_THRESHOLD, step: float = MENPOFIT_STEP) -> tuple[float, float]:
    """menpofit's (AUC, failure rate): Simpson integral of ``mean(NME <= x)``
    over ``arange(0, t + step, step)`` divided by ``t``; failure = ``1 - ced[-1]``."""
    from scipy.integrate import simpson

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


# ------------------------------------------------------------------ report
@dataclass
class EvaluationReport:
    """Every figure of one evaluation (NMEs are fractions; x100 for %).

    ``nme``: ``(N,)`` per image, in ground-truth order; ``names``: ``(N,)``;
    ``yaw_deg``: ``(N,)`` or None; ``bins``: per-yaw-bin stats or None (no yaw).
    """

    label: str
    names: np.ndarray
    nme: np.ndarray
    yaw_deg: np.ndarray | None
    bins: list | None
    balanced_mean: float | None
    balanced_std: float | None
    overall_mean: float
    overall_std: float
    median: float
    threshold: float
    auc: float
    auc_variant: str
    failure_rate: float
    variant_failure_rate: float
    seed_failure_threshold: float
    seed_failure_rate: float
    menpofit_step: float | None = None
    protocol: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(len(self.nme))

    @property
    def headline(self) -> tuple[str, float]:
        """("balanced mean", value) when yaw bins exist, else ("overall mean", value)."""
        if self.balanced_mean is not None:
            return "balanced mean", self.balanced_mean
        return "overall mean", self.overall_mean

    def to_dict(self, per_image: bool = False) -> dict:
        """JSON-ready figures (fractions) plus the protocol; per-image NMEs if asked."""
        d = {
            "label": self.label,
            "n_images": self.n,
            "units": "fraction of sqrt(w*h) of the ground-truth box (x100 = %)",
            "yaw_bins": None if self.bins is None else [
                {"bin": b.label, "lower_deg": b.lower, "upper_deg": None if np.isinf(b.upper) else b.upper,
                 "count": b.count, "mean_nme": b.mean, "std_nme": b.std} for b in self.bins],
            "balanced_mean_nme": self.balanced_mean,
            "balanced_std_of_bin_means": self.balanced_std,
            "overall_mean_nme": self.overall_mean,
            "overall_std_nme": self.overall_std,
            "median_nme": self.median,
            "headline": {"name": self.headline[0], "value": self.headline[1]},
            "threshold": self.threshold,
            "auc": self.auc,
            "auc_variant": self.auc_variant,
            "auc_definition": PROTOCOL_TEXT[f"auc.{self.auc_variant}"],
            "failure_rate": self.failure_rate,
            "variant_failure_rate": self.variant_failure_rate,
            "seed_failure_threshold": self.seed_failure_threshold,
            "seed_failure_rate": self.seed_failure_rate,
            "protocol": self.protocol,
        }
        if self.menpofit_step is not None:
            d["menpofit_step"] = self.menpofit_step
        if per_image:
            d["per_image"] = {"names": [str(n) for n in self.names], "nme": self.nme.tolist()}
        return d


def evaluate(pred, gt, yaw_deg=None, *, names=None, label: str = "predictions",
             threshold: float = DEFAULT_THRESHOLD, auc_variant: str = "ls3dw", menpofit_step: float = MENPOFIT_STEP,
             seed_failure_threshold: float = SEED_FAILURE_THRESHOLD) -> EvaluationReport:
    """Evaluate ``pred`` against ``gt`` (same order, same pixel convention).

    Args:
        pred: ``(N, 68, 2|3)`` or ``(N, 2|3, 68)`` predicted landmarks (z ignored).
        gt: ground truth in the same layouts, e.g. ``(N, 68, 2)`` 0-based pixels.
        yaw_deg: ``(N,)`` signed yaw in degrees (Pose_Para) for the yaw bins, or None.
        names: ``(N,)`` image names for the report (default ``#0000`` ...).
        threshold: AUC / failure threshold (fraction, default 0.07).
        auc_variant: ``"ls3dw"`` (default) or ``"menpofit"``.

    Usable from a training loop on numpy arrays; returns an
    :class:`EvaluationReport` (``report.headline``, ``report.to_dict()``).
    """
    if auc_variant not in AUC_VARIANTS:
        raise EvaluationError(f"unknown AUC variant {auc_variant!r}; known: {', '.join(AUC_VARIANTS)}")
    g = as_landmarks_2d(gt, "ground truth")
    p = as_landmarks_2d(pred, label, n_expected=len(g))
    if len(g) == 0:
        raise EvaluationError("no images to evaluate")
    errors = nme(p, g)
    if names is None:
        names = np.array([f"#{i:04d}" for i in range(len(g))])
    names = np.asarray(names, dtype=str)
    if len(names) != len(g):
        raise EvaluationError(f"{len(names)} names for {len(g)} images")
    bins = bmean = bstd = None
    yaw = None
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
    protocol = dict(PROTOCOL_TEXT)
    protocol = {k: v for k, v in protocol.items() if not k.startswith("auc.") or k == f"auc.{auc_variant}"}
    return EvaluationReport(
        label=label, names=names, nme=errors, yaw_deg=yaw, bins=bins, balanced_mean=bmean, balanced_std=bstd,
        overall_mean=float(errors.mean()), overall_std=float(errors.std()), median=float(np.median(errors)),
        threshold=float(threshold), auc=a, auc_variant=auc_variant, failure_rate=failure_rate(errors, threshold),
        variant_failure_rate=vfr, seed_failure_threshold=float(seed_failure_threshold),
        seed_failure_rate=failure_rate(errors, seed_failure_threshold),
        menpofit_step=float(menpofit_step) if auc_variant == "menpofit" else None, protocol=protocol)


# ------------------------------------------------------------------ text
def _pct(v, digits=2) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}"


def comparison_table(reports: Sequence[EvaluationReport]) -> str:
    """A plain-text table, one row per report (NMEs in %, AUC in [0, 1])."""
    if not reports:
        return ""
    r0 = reports[0]
    t = f"{100 * r0.threshold:g}%"
    s = f"{100 * r0.seed_failure_threshold:g}%"
    cols = ["predictions"]
    has_bins = any(r.bins is not None for r in reports)
    if has_bins:
        cols += list(YAW_BIN_LABELS) + ["balanced mean", "std(bin means)"]
    cols += ["overall mean", "std(images)", f"AUC@{t} [{r0.auc_variant}]", f"FR@{t}", f"FR@{s}"]
    rows = []
    for r in reports:
        row = [r.label]
        if has_bins:
            bm = [b.mean for b in r.bins] if r.bins else [None] * 3
            row += [_pct(v) for v in bm] + [_pct(r.balanced_mean), _pct(r.balanced_std)]
        row += [_pct(r.overall_mean), _pct(r.overall_std), f"{r.auc:.4f}", _pct(r.failure_rate), _pct(r.seed_failure_rate)]
        rows.append(row)
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
    return "\n".join(out)

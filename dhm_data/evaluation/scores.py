"""The figures of one landmark evaluation (:class:`EvaluationReport`) and their table.

:func:`dhm_data.evaluation.metrics.evaluate` fills an :class:`EvaluationReport`;
:func:`comparison_table` prints several side by side.  The words are those of
:mod:`dhm_data.evaluation.protocols`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from dhm_data.errors import PredictionError
from dhm_data.evaluation.protocols import DEFINITIONS, YAW_BIN_LABELS


def finite_rows(points: np.ndarray, what: str, nan_as_failure: bool) -> np.ndarray:
    """``(N,)`` bool: rows of ``(N, 68, D)`` ``points`` without NaN / inf.

    Unless ``nan_as_failure``, a non-finite row raises :class:`PredictionError`
    saying how many and which (first 10 indices)."""
    ok = np.isfinite(points).all(axis=(1, 2))
    if not ok.all() and not nan_as_failure:
        idx = np.flatnonzero(~ok)
        raise PredictionError(
            f"{what}: {len(idx)} of {len(points)} images hold NaN/inf coordinates "
            f"(indices {', '.join(map(str, idx[:10]))}{', ...' if len(idx) > 10 else ''}); "
            "give --nan-as-failure to score them as failures (a detector that found no face)")
    return ok


@dataclass
class EvaluationReport:
    """Every figure of one landmark evaluation (NMEs are fractions; x100 for %).

    ``nme``: ``(N,)`` per image in ground-truth order, ``+inf`` for a failed row;
    ``names``: ``(N,)``; ``yaw_deg``: ``(N,)`` or None; ``bins``: per-yaw-bin stats
    or None; ``metric``: ``"nme"`` (2D) or ``"nme-3d"`` (with ``nme_3d_variant``).
    Means, medians and stds are over the finite rows; CED, AUC and failure rates
    over all rows.
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
    metric: str = "nme"
    nme_3d_variant: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(len(self.nme))

    @property
    def n_failed(self) -> int:
        return int(np.sum(~np.isfinite(self.nme)))

    @property
    def headline(self) -> tuple[str, float]:
        """("balanced mean", value) when yaw bins exist, else ("overall mean", value)."""
        if self.balanced_mean is not None:
            return "balanced mean", self.balanced_mean
        return "overall mean", self.overall_mean

    @property
    def key(self) -> str:
        """``nme`` or ``nme_3d``: the suffix of every figure's key, so 2D and 3D never mix."""
        return "nme" if self.metric == "nme" else "nme_3d"

    def to_dict(self, per_image: bool = False) -> dict:
        """JSON-ready figures (fractions) plus the protocol; per-image NMEs if asked."""
        k = self.key
        definition = DEFINITIONS["nme"] if self.metric == "nme" else DEFINITIONS[f"nme-3d.{self.nme_3d_variant}"]
        d = {
            "label": self.label,
            "metric": self.metric if self.metric == "nme" else f"nme-3d ({self.nme_3d_variant})",
            "definition": definition,
            "n_images": self.n,
            "n_failed": self.n_failed,
            "failed": [str(n) for n in self.names[~np.isfinite(self.nme)]],
            "units": "fraction of sqrt(w*h) of the ground-truth box (x100 = %)",
            "yaw_bins": None if self.bins is None else [
                {"bin": b.label, "lower_deg": b.lower, "upper_deg": None if np.isinf(b.upper) else b.upper,
                 "count": b.count, f"mean_{k}": b.mean, f"std_{k}": b.std} for b in self.bins],
            f"balanced_mean_{k}": self.balanced_mean,
            "balanced_std_of_bin_means": self.balanced_std,
            f"overall_mean_{k}": self.overall_mean,
            f"overall_std_{k}": self.overall_std,
            f"median_{k}": self.median,
            "headline": {"name": self.headline[0], "value": self.headline[1]},
            "threshold": self.threshold,
            "auc": self.auc,
            "auc_variant": self.auc_variant,
            "auc_definition": DEFINITIONS[f"auc.{self.auc_variant}"],
            "failure_rate": self.failure_rate,
            "variant_failure_rate": self.variant_failure_rate,
            "seed_failure_threshold": self.seed_failure_threshold,
            "seed_failure_rate": self.seed_failure_rate,
            "protocol": self.protocol,
        }
        d.update(self.extra)
        if self.menpofit_step is not None:
            d["menpofit_step"] = self.menpofit_step
        if per_image:
            d["per_image"] = {"names": [str(n) for n in self.names], k: [float(x) for x in self.nme]}
        return d


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
    what = "" if r0.metric == "nme" else f" NME-3D[{r0.nme_3d_variant}]"
    if has_bins:
        cols += list(YAW_BIN_LABELS) + ["balanced mean" + what, "std(bin means)"]
    cols += ["overall mean" + what, "std(images)", f"AUC@{t} [{r0.auc_variant}]", f"FR@{t}", f"FR@{s}"]
    if any(r.n_failed for r in reports):
        cols.append("failed")
    rows = []
    for r in reports:
        row = [r.label]
        if has_bins:
            bm = [b.mean for b in r.bins] if r.bins else [None] * 3
            row += [_pct(v) for v in bm] + [_pct(r.balanced_mean), _pct(r.balanced_std)]
        row += [_pct(r.overall_mean), _pct(r.overall_std), f"{r.auc:.4f}", _pct(r.failure_rate),
                _pct(r.seed_failure_rate)]
        if len(cols) > len(row):
            row.append(str(r.n_failed))
        rows.append(row)
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows])

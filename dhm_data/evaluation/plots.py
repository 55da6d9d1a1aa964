"""The CED plot of ``dhm-eval``: one curve per prediction file, AUC in the legend.

Drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display
needed) and written to a temporary name, then renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from dhm_data.evaluation.metrics import EvaluationReport, ced


def ced_figure(reports: Sequence[EvaluationReport], title: str = "", x_max: float | None = None):
    """A matplotlib Figure of the CED curves of ``reports`` (x: NME in %, y: images in %)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # matplotlib is needed only for plots (slow to import)
    from matplotlib.figure import Figure  # matplotlib is needed only for plots (slow to import)

    if not reports:
        raise ValueError("no reports to plot")
    t = reports[0].threshold
    s = reports[0].seed_failure_threshold
    if x_max is None:
        x_max = max(0.10, 1.5 * t)
    x = np.linspace(0.0, x_max, 1001)
    fig = Figure(figsize=(7.5, 5.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    styles = ["-", "--", "-.", ":"]
    for k, r in enumerate(reports):
        y = ced(r.nme, x)
        ax.plot(100 * x, 100 * y, lw=2.2, ls=styles[(k // 10) % len(styles)],
                label=f"{r.label}  (AUC@{100 * t:g}% = {r.auc:.4f} [{r.auc_variant}], "
                      f"{r.headline[0]} NME {100 * r.headline[1]:.2f}%)")
    ax.axvline(100 * t, color="0.35", ls=":", lw=1.2)
    ax.text(100 * t, 55, f"AUC / failure threshold {100 * t:g}% ", color="0.35", fontsize=8.5, rotation=90,
            ha="right", va="center")
    if abs(s - t) > 1e-12:
        ax.axvline(100 * s, color="0.55", ls=":", lw=1.0)
        ax.text(100 * s, 55, f"seed paper failure threshold {100 * s:g}% ", color="0.55", fontsize=8.5, rotation=90,
                ha="right", va="center")
    ax.set_xlim(0, 100 * x_max)
    ax.set_ylim(0, 100)
    ax.set_xticks(np.arange(0, 100 * x_max + 1e-9, 1.0))
    ax.set_yticks(np.arange(0, 101, 10))
    ax.grid(True, alpha=0.35)
    ax.set_xlabel("NME (%), 2D error / sqrt(w·h) of the ground-truth box", fontsize=11)
    ax.set_ylabel("Images with NME ≤ x (%)", fontsize=11)
    n = reports[0].n
    ax.set_title(f"{title}  (n = {n:,})" if title else f"Cumulative error distribution (n = {n:,})", fontsize=12)
    ax.legend(loc="lower right", fontsize=8.5, framealpha=0.9)
    fig.tight_layout()
    return fig


def save_ced_plot(reports: Sequence[EvaluationReport], path, title: str = "", x_max: float | None = None) -> Path:
    """Write the CED plot as PNG to ``path`` (temporary name, then ``os.replace``)."""
    path = Path(path)
    fig = ced_figure(reports, title, x_max)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path

"""The evaluation report: the JSON document of ``dhm-eval``, as a library call.

:func:`evaluation_report` takes a :class:`~dhm_data.evaluation.ground_truth.GroundTruth` and
predictions (arrays, e.g. from a training loop, or files read by the command) and returns an
:class:`EvaluationResult`: ``result.document`` is exactly what ``dhm-eval --json`` writes,
``result.text()`` what it prints, ``result.csv_text()`` its ``--per-image`` table.  It applies
a named protocol (:mod:`dhm_data.evaluation.protocols`): image list, face filter, bins, variants
and quirks, and says in the document which images it left out and why.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

import numpy as np

from dhm_data import __version__
from dhm_data.errors import EvaluationError, PredictionError
from dhm_data.evaluation import checks
from dhm_data.evaluation import metrics as m
from dhm_data.evaluation.ground_truth import DATASETS, GroundTruth
from dhm_data.evaluation.lists import POSE_FILTER, pose_filter
from dhm_data.evaluation.metrics import evaluate
from dhm_data.evaluation.pose import POSE_FORMATS, POSE_VARIANTS, evaluate_pose, pose_table
from dhm_data.evaluation.protocols import DEFINITIONS, Protocol, definitions, get_protocol
from dhm_data.evaluation.scores import comparison_table, finite_rows
from dhm_data.geometry import camera
from dhm_data.geometry.landmarks68 import landmark_array

METRICS = ("nme", "nme-3d", "pose")
#: option -> (default, protocol attribute)
_SETTINGS = {
    "threshold": (m.DEFAULT_THRESHOLD, "threshold"),
    "auc_variant": ("ls3dw", "auc_variant"),
    "nme_3d_variant": ("2dasl", "nme_3d_variant"),
    "pose_format": (None, "pose_format"),
    "pose_variant": ("plain", "pose_variant"),
}


@dataclass
class Prediction:
    """One set of predictions.

    ``values``: landmarks ``(N, 68, 2|3)`` in 0-based source pixels (metrics ``nme``,
    ``nme-3d``) or poses in the chosen pose format; ``gt_rows``: ``(N,)`` ground-truth
    row of each value row, or None when the rows are the ground truth's in order;
    ``source``: what the report says about where they came from."""

    label: str
    values: np.ndarray
    gt_rows: np.ndarray | None = None
    source: dict = field(default_factory=dict)


@dataclass
class EvaluationResult:
    """``document`` (the JSON report), the per-file ``reports``, the evaluated ground
    truth ``gt`` and the ``warnings`` (also in the document)."""

    document: dict
    reports: list
    gt: GroundTruth
    warnings: list
    metric: str

    def text(self) -> str:
        """The console report of ``dhm-eval``."""
        d = self.document
        gi, im = d["ground_truth"], d["images"]
        lines = [f"dhm-eval {d['package_version']}: {d['dataset']} = {gi['title']}; {im['evaluated']:,} of "
                 f"{im['dataset']:,} images evaluated", f"ground truth: {gi['source']}"]
        p = d["protocol"]
        if p["name"]:
            lines.append(f"protocol {p['name']}: {p['title']} ({p['source']})")
            lines += [f"  quirk {q['name']}: {q['what']}" for q in p["quirks"]]
        for reason, names in im["left_out"].items():
            lines.append(f"left out ({reason}): {len(names):,} images (first: {', '.join(names[:5])})")
        if self.metric == "pose":
            lines.append(f"pose format {p['pose_format']} ({POSE_FORMATS[p['pose_format']].what}); variant "
                         f"{p['pose_variant']}")
            lines += ["", pose_table(self.reports), "", "degrees; MAE = mean of the yaw, pitch and roll MAEs; "
                      "geodesic = angle of R_pred R_true^T."]
        else:
            if "yaw_bin_counts" in gi:
                lines.append("yaw bins (|yaw|, degrees): " + " | ".join(f"{k} {v:,}" for k, v in
                                                                        gi["yaw_bin_counts"].items())
                             + f"  ({gi['yaw_abs_over_90']} with |yaw| > 90 in the last bin; yaw from "
                               f"{gi['yaw_source']})")
            else:
                lines.append("yaw bins: none; the headline is the overall mean")
            src = d["predictions"][0]
            conv = "1-based, converted" if src.get("one_based") else "0-based"
            crop = ", crop coordinates mapped back through the build affines" if src.get("crop_coords") else ""
            lines.append(f"predictions: {conv} pixels{crop}")
            lines += ["", comparison_table(self.reports), ""]
            r0 = self.reports[0]
            t = f"{100 * r0.threshold:g}%"
            defn = DEFINITIONS["nme"] if self.metric == "nme" else DEFINITIONS[f"nme-3d.{r0.nme_3d_variant}"]
            lines.append(f"NME in %: {defn}.")
            if "yaw_bin_counts" in gi:
                lines.append(f"balanced mean = {DEFINITIONS['balanced_mean']}; std(bin means) = "
                             f"{DEFINITIONS['balanced_std']}; overall mean = {DEFINITIONS['overall_mean']}.")
            lines.append(f"AUC@{t} [{r0.auc_variant}]: {DEFINITIONS['auc.' + r0.auc_variant]}.")
            lines.append(f"FR@x = {DEFINITIONS['failure_rate']} (the seed paper's failure threshold is "
                         f"{100 * r0.seed_failure_threshold:g}%).")
        return "\n".join(lines)

    def csv_text(self) -> str:
        """Per-image table: names, yaw and bin, then one error column per file (per angle for pose)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        gt = self.gt
        head = ["name"] + (["alias"] if gt.aliases is not None else [])
        yaw = gt.yaw_deg if gt.yaw_deg is not None or gt.pose_para is None else camera.yaw_degrees(gt.pose_para)
        if yaw is not None:
            head += ["yaw_deg", "yaw_bin"]
            bins = m.yaw_bin_index(yaw)
        if self.metric == "pose":
            head += [f"{k}[{r.label}]" for r in self.reports for k in ("yaw_err", "pitch_err", "roll_err", "geodesic")]
        else:
            head += [f"{'nme' if self.metric == 'nme' else 'nme_3d'}[{r.label}]" for r in self.reports]
        w.writerow(head)
        for i, name in enumerate(gt.names):
            row = [str(name)] + ([str(gt.aliases[i])] if gt.aliases is not None else [])
            if yaw is not None:
                row += [f"{yaw[i]:.6g}", m.YAW_BIN_LABELS[bins[i]]]
            for r in self.reports:
                if self.metric == "pose":
                    row += [f"{v:.10g}" for v in r.errors[i]] + [f"{r.geodesic[i]:.10g}"]
                else:
                    row.append(f"{r.nme[i]:.10g}")
            w.writerow(row)
        return buf.getvalue()


def _settings(protocol: Protocol | None, given: dict) -> dict:
    """Option values: given, else the protocol's, else the default; a given value the
    protocol fixes otherwise is refused."""
    out = {}
    for k, (default, attr) in _SETTINGS.items():
        fixed = getattr(protocol, attr) if protocol is not None else None
        if given.get(k) is not None and fixed is not None and given[k] != fixed and \
                (k != "pose_format" or protocol.metric == "pose"):
            raise EvaluationError(f"--protocol {protocol.name} fixes {k.replace('_', '-')} = {fixed}; found "
                                  f"{given[k]} (leave the option out, or drop --protocol)")
        out[k] = given[k] if given.get(k) is not None else (fixed if fixed is not None else default)
    return out


def _allowed_rows(gt: GroundTruth, metric: str, protocol: Protocol | None, all_faces: bool) -> tuple[np.ndarray, dict]:
    """``(N,)`` bool of the ground-truth images the evaluation may score, and
    ``{reason: names}`` of those it may not."""
    allowed = np.ones(len(gt), bool)
    out = {}
    names = np.array([str(n) for n in gt.names])
    if protocol is not None and protocol.exclude:
        ex = np.isin(names, protocol.exclude)
        out[f"excluded by protocol {protocol.name}"] = list(names[ex])
        allowed &= ~ex
    wants_filter = (metric == "pose" and not all_faces) or (protocol is not None and protocol.face_filter)
    if wants_filter:
        if all_faces and protocol is not None and protocol.face_filter:
            raise EvaluationError(f"--protocol {protocol.name} evaluates the [-99, 99] faces only; --all-faces "
                                  "contradicts it")
        if gt.pose_para is None:
            raise EvaluationError(f"{gt.dataset}: the ground truth has no Pose_Para, which the [-99, 99] face "
                                  "filter needs (give the raw AFLW2000 folder, or the 3DDFA arrays with "
                                  "AFLW2000-3D.pose_para.npy)")
        keep = pose_filter(names, gt.pose_para)
        out[f"outside the [-99, 99] pose filter (manifests/{POSE_FILTER})"] = list(names[allowed & ~keep])
        allowed &= keep
    return allowed, {k: v for k, v in out.items() if v}


def evaluation_report(gt: GroundTruth, predictions, *, metric: str = "nme", protocol: str | None = None,
                      threshold: float | None = None, auc_variant: str | None = None,
                      menpofit_step: float = m.MENPOFIT_STEP, nme_3d_variant: str | None = None,
                      pose_format: str | None = None, pose_variant: str | None = None, all_faces: bool = False,
                      nan_as_failure: bool = False, one_based: bool = False, version: str | None = None,
                      per_image: bool = False) -> EvaluationResult:
    """Score ``predictions`` against ``gt`` and build the report document.

    Args:
        gt: from :func:`~dhm_data.evaluation.ground_truth.load_ground_truth` (or built by hand).
        predictions: a :class:`Prediction`, a list of them, or one array in ``gt``'s order.
        metric: ``nme`` (2D), ``nme-3d`` (needs ``gt.landmarks_3d``) or ``pose`` (needs
            ``gt.pose_para``; 1,969 faces unless ``all_faces``).
        protocol: a name of :data:`~dhm_data.evaluation.protocols.PROTOCOLS`; it fixes every
            choice it makes (a conflicting option raises :class:`EvaluationError`).
        threshold, auc_variant, menpofit_step, nme_3d_variant, pose_format, pose_variant:
            the choices (None = the protocol's, else the default).
        nan_as_failure: rows holding NaN are scored as failures and counted.
        one_based: recorded (the caller converted already); sharpens a warning.
        version: the package version written in the document (default: this one's).
    """
    if metric not in METRICS:
        raise EvaluationError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    proto = get_protocol(protocol) if protocol else None
    if proto is not None and proto.metric != metric:
        raise EvaluationError(f"--protocol {proto.name} scores metric {proto.metric!r}; found --metric {metric}")
    if proto is not None and gt.dataset not in proto.datasets:
        raise EvaluationError(f"--protocol {proto.name} is defined on {', '.join(proto.datasets)}; found --dataset "
                              f"{gt.dataset}")
    s = _settings(proto, dict(threshold=threshold, auc_variant=auc_variant, nme_3d_variant=nme_3d_variant,
                              pose_format=pose_format, pose_variant=pose_variant))
    if metric == "pose" and s["pose_format"] not in POSE_FORMATS:
        raise EvaluationError(f"the pose metric needs a pose format; known: {', '.join(POSE_FORMATS)}")
    if metric == "pose" and s["pose_variant"] not in POSE_VARIANTS:
        raise EvaluationError(f"unknown pose variant {s['pose_variant']!r}; known: {', '.join(POSE_VARIANTS)}")
    if metric == "nme-3d" and gt.landmarks_3d is None:
        raise EvaluationError(f"{gt.dataset}: the ground truth has no 3D landmarks ({gt.source}); the 3D NME needs "
                              "pt3d_68 with its z (the AFLW2000 folder or the 3DDFA AFLW2000-3D.pts68.npy)")
    if isinstance(predictions, Prediction):
        predictions = [predictions]
    elif isinstance(predictions, np.ndarray):
        predictions = [Prediction("predictions", predictions)]
    if not predictions:
        raise EvaluationError("no predictions to evaluate")
    allowed, left_out = _allowed_rows(gt, metric, proto, all_faces)
    evaluated = None
    for p in predictions:
        rows = np.arange(len(gt)) if p.gt_rows is None else np.asarray(p.gt_rows, np.int64)
        if p.gt_rows is None and len(p.values) != len(gt):
            diff = len(p.values) - len(gt)
            raise PredictionError(f"{p.label}: {len(p.values)} images, the ground truth has {len(gt)} "
                                  f"({abs(diff)} {'too many' if diff > 0 else 'missing'})")
        ev_rows = np.sort(rows[allowed[rows]])
        if evaluated is not None and not np.array_equal(ev_rows, evaluated):
            raise PredictionError(f"{p.label}: covers other images than {predictions[0].label}; every file of one "
                                  "report must cover the same images")
        evaluated = ev_rows
    unpredicted = np.setdiff1d(np.flatnonzero(allowed), evaluated)
    if unpredicted.size:
        left_out["not in the predictions"] = [str(n) for n in gt.names[unpredicted]]
    if evaluated.size == 0:
        raise EvaluationError("no image left to evaluate: " + "; ".join(f"{k}: {len(v)}" for k, v in left_out.items()))
    sub = gt.take(evaluated)
    quirks = list(proto.quirks) if proto is not None else []
    warnings, reports = [], []
    for p in predictions:
        rows = np.arange(len(gt)) if p.gt_rows is None else np.asarray(p.gt_rows, np.int64)
        where = {r: i for i, r in enumerate(rows)}
        values = np.asarray(p.values)[[where[r] for r in evaluated]]
        if metric == "pose":
            warnings += [f"{p.label}: {w}" for w in checks.pose_slips(values, s["pose_format"], sub.pose_para)]
            reports.append(evaluate_pose(values, sub.pose_para, pose_format=s["pose_format"], names=sub.names,
                                         label=p.label, variant=s["pose_variant"], nan_as_failure=nan_as_failure))
            continue
        what = p.source.get("file", p.label)
        values = landmark_array(values, what, error=PredictionError)
        finite_rows(values, what, nan_as_failure)
        warnings += [f"{p.label}: {w}" for w in checks.landmark_slips(values, sub.landmarks, one_based)]
        if "3ddfa.reannotated-offset" in quirks and gt.dataset == "aflw2000-reannotated":
            values[..., :2] += 1.0                      # the script's 1-based predictions vs the 0-based labels
        ref = sub.landmarks if metric == "nme" else sub.landmarks_3d
        yaw = sub.yaw_deg if (proto is None or proto.yaw_bins) else None
        reports.append(evaluate(values, ref, yaw, names=sub.names, label=p.label, threshold=s["threshold"],
                                auc_variant=s["auc_variant"], menpofit_step=menpofit_step, metric=metric,
                                nme_3d_variant=s["nme_3d_variant"], nan_as_failure=nan_as_failure, quirks=quirks))
    gt_info = gt.describe()
    gt_info["n_images"] = len(sub)
    if metric != "pose" and reports[0].bins is not None:
        gt_info["yaw_bin_counts"] = m.bin_counts(sub.yaw_deg)
        gt_info["yaw_abs_over_90"] = int((np.abs(sub.yaw_deg) > 90).sum())
    applied = [q for q in quirks if q != "3ddfa.reannotated-offset" or gt.dataset == "aflw2000-reannotated"]
    pdoc = {"name": proto.name if proto else None, "title": proto.title if proto else None,
            "source": proto.source if proto else None, "metric": metric}
    if proto is not None:
        pdoc.update({k: v for k, v in proto.describe().items() if k not in pdoc})
    pdoc["quirks"] = [q for q in pdoc.get("quirks", []) if q["name"] in applied]
    if metric == "pose":
        pdoc.update(pose_format=s["pose_format"], pose_variant=s["pose_variant"], all_faces=bool(all_faces),
                    definitions=definitions("pose.angles", "pose.mae", "pose.geodesic", "pose.filter-99",
                                            "pose.bins"))
    else:
        keys = ["nme" if metric == "nme" else f"nme-3d.{s['nme_3d_variant']}", "coordinates", "yaw_bins",
                "balanced_mean", "balanced_std", "overall_mean", "overall_std", "ced", "failure_rate",
                f"auc.{s['auc_variant']}"]
        pdoc.update(threshold=s["threshold"], auc_variant=s["auc_variant"],
                    seed_failure_threshold=m.SEED_FAILURE_THRESHOLD,
                    yaw_bin_labels=list(m.YAW_BIN_LABELS) if reports[0].bins is not None else None,
                    headline="balanced mean of the yaw-bin means" if reports[0].bins is not None else "overall mean",
                    definitions=definitions(*keys))
        if metric == "nme-3d":
            pdoc["nme_3d_variant"] = s["nme_3d_variant"]
    pdoc["nan_as_failure"] = bool(nan_as_failure)
    doc = {
        "tool": "dhm-eval", "package_version": version or __version__, "dataset": gt.dataset, "metric": metric,
        "protocol": pdoc, "ground_truth": gt_info,
        "images": {"dataset": len(gt), "evaluated": int(len(sub)), "left_out": left_out},
        "predictions": [dict(label=p.label, **p.source) for p in predictions],
        "warnings": warnings,
        "results": [r.to_dict(per_image=per_image) for r in reports],
    }
    return EvaluationResult(doc, reports, sub, warnings, metric)


def dataset_title(dataset: str) -> str:
    """The human title of a ``--dataset`` name."""
    return DATASETS[dataset]["title"]

"""``dhm-eval``: NME / CED / AUC of landmark predictions under the published protocol.

A thin shell: ground truth and prediction files through :mod:`dhm_data.evaluate.ground_truth`,
every figure from :mod:`dhm_data.evaluate.metrics`, the plot from :mod:`dhm_data.evaluate.plots`.
Everything is computed before anything is written; outputs are written to temporary
names and renamed into place only when all of them are ready, so an error leaves no
report behind.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path

import click

from dhm_data.evaluate.ground_truth import DATASETS


def _labels(preds, labels) -> list[str]:
    if labels:
        if len(labels) != len(preds):
            raise click.UsageError(f"{len(labels)} --label values for {len(preds)} prediction files; give one per file")
        return list(labels)
    stems = [p.stem for p in preds]
    return [p.stem if stems.count(p.stem) == 1 else str(p) for p in preds]


def _csv_text(gt, reports, yaw_bins) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["name"] + (["alias"] if gt.aliases is not None else [])
    if gt.yaw_deg is not None:
        head += ["yaw_deg", "yaw_bin"]
    head += [f"nme[{r.label}]" for r in reports]
    w.writerow(head)
    from dhm_data.evaluate.metrics import YAW_BIN_LABELS

    for i, name in enumerate(gt.names):
        row = [str(name)] + ([str(gt.aliases[i])] if gt.aliases is not None else [])
        if gt.yaw_deg is not None:
            row += [f"{gt.yaw_deg[i]:.6g}", YAW_BIN_LABELS[yaw_bins[i]]]
        row += [f"{r.nme[i]:.10g}" for r in reports]
        w.writerow(row)
    return buf.getvalue()


def _write_all(outputs: dict) -> None:
    """``{path: bytes | callable(tmp_path)}``: write every output to a temporary name,
    then rename them all; on any failure remove the temporaries."""
    staged = []
    try:
        for path, content in outputs.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
            staged.append((tmp, path))
            if callable(content):
                content(tmp)
            else:
                tmp.write_bytes(content)
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.argument("preds", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--dataset", "-d", required=True, type=click.Choice(list(DATASETS)), help="Evaluation set.")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="Ground truth: the raw dataset folder (AFLW2000, LS3D-W) or a folder of the 3DDFA benchmark "
                   "arrays (AFLW2000-3D.pts68.npy ...).")
@click.option("--build", "build_dir", type=click.Path(path_type=Path), default=None,
              help="Ground truth: a `dhm-data build` output directory (needed for 300wlp-val and --crop-coords).")
@click.option("--aflw2000-root", type=click.Path(path_type=Path), default=None,
              help="aflw2000-reannotated read from an LS3D-W folder: the AFLW2000 folder whose Pose_Para gives the yaw bins.")
@click.option("--threshold", type=float, default=0.07, help="AUC / failure-rate threshold (fraction of the box size).")
@click.option("--auc-variant", type=click.Choice(["ls3dw", "menpofit"]), default="ls3dw",
              help="ls3dw: Bulat & Tzimiropoulos 2017 (strict <, 1000-step axis); menpofit: <= and Simpson.")
@click.option("--menpofit-step", type=float, default=1e-4, help="Error-axis step of the menpofit AUC variant.")
@click.option("--one-based", is_flag=True, help="Predictions are 1-based pixels (subtract 1); default 0-based.")
@click.option("--crop-coords", is_flag=True,
              help="Predictions are in crop pixels of the --build samples; map them back through the recorded affines.")
@click.option("--label", "labels", multiple=True, help="Name of each prediction file in the table and plot (repeat).")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Write the CED plot (PNG).")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write every figure and the protocol as JSON.")
@click.option("--per-image", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write per-image NMEs as CSV.")
def main(preds, dataset, root, build_dir, aflw2000_root, threshold, auc_variant, menpofit_step, one_based, crop_coords,
         labels, plot, json_path, per_image):
    """Evaluate landmark predictions PRED [PRED ...] on a test set.

    PRED: .npy of shape (N,68,2), (N,2,68) or (N,68,3) (z ignored) in the dataset's
    canonical order (sorted file names / build order), or .npz with `landmarks` and
    `names` (matched by name, any order).  Pixels are 0-based unless --one-based.

    \b
    Examples:
      dhm-eval pred.npy --dataset aflw2000 --root ~/data/AFLW2000 --plot ced.png --json report.json
      dhm-eval a.npy b.npy --label A --label B --dataset aflw2000 --build out/aflw2000
    """
    from dhm_data import __version__
    from dhm_data.errors import EvaluationError
    from dhm_data.evaluate.ground_truth import align_predictions, load_ground_truth, read_predictions
    from dhm_data.evaluate.metrics import YAW_BIN_LABELS, bin_counts, comparison_table, evaluate, yaw_bin_index

    if root is None and build_dir is None:
        raise click.UsageError("give the ground truth: --root DIR (raw dataset or 3DDFA arrays) or --build DIR")
    if threshold <= 0 or threshold > 1:
        raise click.BadParameter(f"{threshold}: expected 0 < threshold <= 1 (a fraction, 0.07 = 7%)",
                                 param_hint="--threshold")
    names = _labels(preds, labels)
    try:
        gt = load_ground_truth(dataset, root=root, build=build_dir, aflw2000_root=aflw2000_root)
        reports = []
        for path, label in zip(preds, names):
            pf = read_predictions(path)
            lm = align_predictions(pf, gt, one_based=one_based, crop_coords=crop_coords)
            reports.append(evaluate(lm, gt.landmarks, gt.yaw_deg, names=gt.names, label=label, threshold=threshold,
                                    auc_variant=auc_variant, menpofit_step=menpofit_step))
    except EvaluationError as e:
        raise click.ClickException(str(e)) from e

    gt_info = gt.describe()
    lines = [f"dhm-eval {__version__}: {dataset} = {DATASETS[dataset]['title']}; {len(gt):,} images",
             f"ground truth: {gt.source}"]
    if gt.positional_names:
        lines.append("names: positional (#0000 ...): these arrays carry no file names; .npy predictions must be in "
                     "sorted file-name order")
    bins = None
    if gt.yaw_deg is not None:
        counts = bin_counts(gt.yaw_deg)
        over90 = int((abs(gt.yaw_deg) > 90).sum())
        bins = yaw_bin_index(gt.yaw_deg)
        gt_info["yaw_bin_counts"] = counts
        gt_info["yaw_abs_over_90"] = over90
        lines.append("yaw bins (|yaw|, degrees): " + " | ".join(f"{k} {v:,}" for k, v in counts.items())
                     + f"  ({over90} with |yaw| > 90 in the last bin; yaw from {gt.yaw_source})")
    else:
        lines.append("yaw bins: none (no yaw labels for this set); the headline is the overall mean")
    conv = "1-based, converted" if one_based else "0-based"
    lines.append(f"predictions: {conv} pixels{', crop coordinates mapped back through the build affines' if crop_coords else ''}")
    lines += ["", comparison_table(reports), ""]
    t = f"{100 * threshold:g}%"
    legend = ["NME in % of sqrt(w*h) of the ground-truth 68-point box, 2D (x, y) only."]
    if bins is not None:
        legend.append("balanced mean = mean of the 3 bin means (headline, as published); std(bin means) = population "
                      "std (ddof=0) of the bin means; overall mean = over images.")
    legend.append(f"AUC@{t} [{auc_variant}]: "
                  + ("mean of c_i = frac(NME < linspace(0,1,1000)_i) over the first round(1000 t) i (LS3D-W)"
                     if auc_variant == "ls3dw" else
                     f"simpson(frac(NME <= x), x = arange(0, t+step, step), step {menpofit_step:g}) / t (menpofit)"))
    legend.append(f"FR@x = fraction of images with NME > x (the seed paper's failure threshold is "
                  f"{100 * reports[0].seed_failure_threshold:g}%).")
    lines += legend

    outputs = {}
    if json_path is not None:
        doc = {
            "tool": "dhm-eval",
            "package_version": __version__,
            "dataset": dataset,
            "ground_truth": gt_info,
            "predictions": [{"file": str(p), "label": lab, "one_based": bool(one_based), "crop_coords": bool(crop_coords)}
                            for p, lab in zip(preds, names)],
            "protocol": dict(reports[0].protocol, threshold=threshold, auc_variant=auc_variant,
                             seed_failure_threshold=reports[0].seed_failure_threshold,
                             yaw_bin_labels=list(YAW_BIN_LABELS) if bins is not None else None,
                             headline="balanced mean of the yaw-bin means" if bins is not None else "overall mean"),
            "results": [r.to_dict() for r in reports],
        }
        outputs[json_path] = (json.dumps(doc, indent=2) + "\n").encode()
    if per_image is not None:
        outputs[per_image] = _csv_text(gt, reports, bins).encode()
    if plot is not None:
        from dhm_data.evaluate.plots import ced_figure

        fig = ced_figure(reports, title=f"{DATASETS[dataset]['title']}")
        outputs[plot] = lambda tmp: fig.savefig(tmp, format="png")
    _write_all(outputs)
    for p in outputs:
        lines.append(f"wrote {p}")
    click.echo("\n".join(lines))


if __name__ == "__main__":  # pragma: no cover
    main()

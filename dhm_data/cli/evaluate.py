"""``dhm-eval``: score landmark, 3DDFA-parameter or head-pose predictions on a test set.

A thin shell: it parses options, reads the files (:mod:`dhm_data.evaluation.ground_truth`,
:mod:`dhm_data.evaluation.predictions`), calls :func:`dhm_data.evaluation.report.evaluation_report`
(the library call a training loop makes too), prints its text and writes its document, table
and plot.  Everything is computed before anything is written; outputs go to temporary names
and are renamed into place only when all are ready, so an error leaves no report behind.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dhm_data.evaluation.ground_truth import DATASETS
from dhm_data.evaluation.pose import POSE_FORMATS, POSE_VARIANTS
from dhm_data.evaluation.protocols import DEFINITIONS, PROTOCOLS, protocol_help

_FORMATS_HELP = "; ".join(f"{f.name}: {f.what}" for f in POSE_FORMATS.values())


def _labels(preds, labels) -> list[str]:
    if labels:
        if len(labels) != len(preds):
            raise click.UsageError(f"{len(labels)} --label values for {len(preds)} prediction files; give one per file")
        return list(labels)
    stems = [p.stem for p in preds]
    return [p.stem if stems.count(p.stem) == 1 else str(p) for p in preds]


def _names_files(names, preds) -> list:
    if not names:
        return [None] * len(preds)
    if len(names) == 1:
        return list(names) * len(preds)
    if len(names) != len(preds):
        raise click.UsageError(f"{len(names)} --names files for {len(preds)} prediction files; give one, or one per file")
    return list(names)


def _write_all(outputs: dict) -> None:
    """``{path: bytes | callable(tmp_path)}``: every output to a temporary name, then all renamed."""
    # imported when the command runs, so that `--help` and start-up stay fast
    import contextlib
    import os

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


def _predictions(preds, labels, names_files, gt, kind, protocol, opts):
    """Read every file and bring it to :class:`Prediction` rows of ``gt``."""
    # imported when the command runs, so that `--help` and start-up stay fast
    import numpy as np

    # imported when the command runs, so that `--help` and start-up stay fast
    from dhm_data.evaluation.lists import read_names_file
    from dhm_data.evaluation.predictions import decode_3ddfa, read_predictions, resolve_rows, to_source_pixels
    from dhm_data.evaluation.report import Prediction

    subset, subset_name = None, ""
    if protocol is not None and protocol.exclude:
        keep = ~np.isin(np.array([str(n) for n in gt.names]), protocol.exclude)
        subset, subset_name = np.flatnonzero(keep), f"protocol {protocol.name}"
    if kind == "pose" and not opts["all_faces"] and gt.pose_para is not None:
        # imported when the command runs, so that `--help` and start-up stay fast
        from dhm_data.evaluation.lists import pose_filter

        subset, subset_name = np.flatnonzero(pose_filter(gt.names, gt.pose_para)), "the [-99, 99] pose filter"
    decoder = None
    if kind == "3ddfa-params":
        # imported when the command runs, so that `--help` and start-up stay fast
        from dhm_data.evaluation.tddfa import read_param_stats
        from dhm_data.models.formats import load_model

        missing = [o for o, v in (("--bfm", opts["bfm"]), ("--param-stats", opts["param_stats"]),
                                  ("--roi-box", opts["roi_box"])) if v is None]
        if missing:
            raise click.UsageError(f"--input 3ddfa-params needs {', '.join(missing)} (the 68-row bases, the "
                                   "whitening statistics param_whitening.pkl, AFLW2000-3D_crop.roi_box.npy)")
        boxes = np.load(opts["roi_box"], allow_pickle=False)
        decoder = (load_model(opts["bfm"]), read_param_stats(opts["param_stats"]), boxes)
    out = []
    for path, label, names_file in zip(preds, labels, names_files):
        pf = read_predictions(path, "pose" if kind == "pose" else kind)
        names = read_names_file(names_file) if names_file is not None else pf.names
        n = len(pf.values) if np.ndim(pf.values) else 0
        rows = resolve_rows(n, names, gt, str(path), subset, subset_name)
        source = {"file": str(path), "input": kind, "names": str(names_file) if names_file else
                  ("npz 'names'" if pf.names is not None else "positional")}
        if kind == "pose":
            values = pf.values
        elif kind == "3ddfa-params":
            values, info = decode_3ddfa(pf.values, gt.names[rows], *decoder)
            source.update(info, bfm=str(opts["bfm"]), param_stats=str(opts["param_stats"]),
                          roi_box=str(opts["roi_box"]))
        else:
            values = to_source_pixels(pf.values, gt.take(rows), str(path), opts["one_based"], opts["crop_coords"])
            source.update(one_based=bool(opts["one_based"]), crop_coords=bool(opts["crop_coords"]))
        out.append(Prediction(label, values, rows, source))
    return out


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.argument("preds", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--dataset", "-d", required=True, type=click.Choice(list(DATASETS)), help="Evaluation set.")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="Ground truth: the raw dataset folder (AFLW2000, LS3D-W) or a folder of the 3DDFA benchmark "
                   "arrays (AFLW2000-3D.pts68.npy ...; AFLW2000-3D.pose_para.npy for --metric pose).")
@click.option("--build", "build_dir", type=click.Path(path_type=Path), default=None,
              help="Ground truth: a `dhm-data build` output directory (needed for 300wlp-val and --crop-coords).")
@click.option("--aflw2000-root", type=click.Path(path_type=Path), default=None,
              help="aflw2000-reannotated read from an LS3D-W folder: the AFLW2000 folder whose Pose_Para gives the yaw bins.")
@click.option("--metric", type=click.Choice(["nme", "nme-3d", "pose"]), default="nme",
              help=f"nme: {DEFINITIONS['nme']}. nme-3d: (N, 68, 3) predictions; see --nme-3d-variant. "
                   f"pose: head pose, see --pose-format.")
@click.option("--input", "input_kind", type=click.Choice(["landmarks", "3ddfa-params"]), default=None,
              help="[default: landmarks, or the protocol's] landmarks: (N, 68, 2|3) or (N, 2|3, 68) pixels. 3ddfa-params: (N, 62) whitened 3DDFA-family "
                   "parameters decoded with --bfm, --param-stats and --roi-box (cleardusk/3DDFA benchmark).")
@click.option("--protocol", type=click.Choice(list(PROTOCOLS)), default=None,
              help="Everything one published script does (image list, filter, normaliser, bins, means, variants, "
                   "quirks), named in the report. " + protocol_help())
@click.option("--bfm", type=click.Path(path_type=Path, exists=True), default=None,
              help="--input 3ddfa-params: the morphable model with the 68-row bases (e.g. the bfm68 folder of "
                   "u_base.txt, w_shp_base.txt, w_exp_base.txt).")
@click.option("--param-stats", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="--input 3ddfa-params: param_whitening.pkl (read with a numpy-only unpickler) or an .npz with "
                   "param_mean / param_std.")
@click.option("--roi-box", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="--input 3ddfa-params: AFLW2000-3D_crop.roi_box.npy, (2000, 4) [sx, sy, ex, ey] in sorted name order.")
@click.option("--names", "names_files", multiple=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="The image of each row: a text file, one name a line (.jpg optional); the report evaluates "
                   "exactly those images and lists the ones left out. One for all files, or one per file.")
@click.option("--pose-format", type=click.Choice(list(POSE_FORMATS)), default=None,
              help="--metric pose: the convention of the poses. " + _FORMATS_HELP)
@click.option("--pose-variant", type=click.Choice(list(POSE_VARIANTS)), default=None,
              help="--metric pose [default: plain, or the protocol's]. plain: " + DEFINITIONS["pose.mae"]
                   + ". 6drepnet: a quirk, never the default.")
@click.option("--all-faces", is_flag=True, help="--metric pose: all 2,000 faces instead of the 1,969 of the "
                                                   "[-99, 99] filter.")
@click.option("--nme-3d-variant", type=click.Choice(["2dasl", "no-shift"]), default=None,
              help="--metric nme-3d [default: 2dasl]. 2dasl: " + DEFINITIONS["nme-3d.2dasl"])
@click.option("--nan-as-failure", is_flag=True,
              help="Score rows holding NaN (a detector that found no face) as failures instead of refusing the "
                   "file; the report counts them.")
@click.option("--threshold", type=float, default=None,
              help="AUC / failure-rate threshold, a fraction of the box size [default: 0.07, or the protocol's].")
@click.option("--auc-variant", type=click.Choice(["ls3dw", "menpofit"]), default=None,
              help="[default: ls3dw] ls3dw: " + DEFINITIONS["auc.ls3dw"] + ". menpofit: " + DEFINITIONS["auc.menpofit"])
@click.option("--menpofit-step", type=float, default=1e-4, help="Error-axis step of the menpofit AUC variant.")
@click.option("--one-based", is_flag=True, help="Predictions are 1-based pixels (subtract 1); default 0-based.")
@click.option("--crop-coords", is_flag=True,
              help="Predictions are in crop pixels of the --build samples; map them back through the recorded affines.")
@click.option("--label", "labels", multiple=True, help="Name of each prediction file in the table and plot (repeat).")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Write the CED plot (PNG).")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the report document: every figure, the protocol and its choices, the images left out, "
                   "the warnings.")
@click.option("--per-image", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write per-image errors as CSV.")
def main(preds, dataset, root, build_dir, aflw2000_root, metric, input_kind, protocol, bfm, param_stats, roi_box,
         names_files, pose_format, pose_variant, all_faces, nme_3d_variant, nan_as_failure, threshold, auc_variant,
         menpofit_step, one_based, crop_coords, labels, plot, json_path, per_image):
    """Evaluate predictions PRED [PRED ...] on a test set.

    PRED: .npy in the dataset's canonical order (sorted file names / build order) or in
    the order of the protocol's list, or .npz with the array ('landmarks', 'params' or
    'poses') and 'names' (matched by file name, any order).  Landmark shapes: (N, 68, 2),
    (N, 2, 68), (N, 68, 3), (N, 3, 68); pixels are 0-based unless --one-based.

    \b
    Examples:
      dhm-eval pred.npy --dataset aflw2000 --root ~/data/AFLW2000 --plot ced.png --json report.json
      dhm-eval params.npy --dataset aflw2000 --root test.configs --input 3ddfa-params --bfm bfm68 \\
          --param-stats param_whitening.pkl --roi-box AFLW2000-3D_crop.roi_box.npy --protocol 2dasl-1998
      dhm-eval poses.npy --dataset aflw2000 --root ~/data/AFLW2000 --metric pose --pose-format ypr-deg
    """
    # imported when the command runs, so that `--help` and start-up stay fast
    from dhm_data.errors import DhmDataError
    from dhm_data.evaluation.ground_truth import load_ground_truth
    from dhm_data.evaluation.protocols import get_protocol
    from dhm_data.evaluation.report import dataset_title, evaluation_report

    if root is None and build_dir is None:
        raise click.UsageError("give the ground truth: --root DIR (raw dataset or 3DDFA arrays) or --build DIR")
    if threshold is not None and not 0 < threshold <= 1:
        raise click.BadParameter(f"{threshold}: expected 0 < threshold <= 1 (a fraction, 0.07 = 7%)",
                                 param_hint="--threshold")
    proto = get_protocol(protocol) if protocol else None
    if input_kind is None:
        input_kind = "3ddfa-params" if proto is not None and proto.input == "3ddfa-params" else "landmarks"
    kind = "pose" if metric == "pose" else input_kind
    if metric == "pose" and pose_format is None and proto is None:
        raise click.UsageError(f"--metric pose needs --pose-format ({', '.join(POSE_FORMATS)}) or --protocol")
    names = _labels(preds, labels)
    opts = dict(bfm=bfm, param_stats=param_stats, roi_box=roi_box, one_based=one_based, crop_coords=crop_coords,
                all_faces=all_faces)
    try:
        gt = load_ground_truth(dataset, root=root, build=build_dir, aflw2000_root=aflw2000_root)
        predictions = _predictions(preds, names, _names_files(names_files, preds), gt, kind, proto, opts)
        result = evaluation_report(gt, predictions, metric=metric, protocol=protocol, threshold=threshold,
                                   auc_variant=auc_variant, menpofit_step=menpofit_step, nme_3d_variant=nme_3d_variant,
                                   pose_format=pose_format, pose_variant=pose_variant, all_faces=all_faces,
                                   nan_as_failure=nan_as_failure, one_based=one_based)
    except DhmDataError as e:
        raise click.ClickException(str(e)) from e

    outputs = {}
    if json_path is not None:
        outputs[json_path] = (json.dumps(result.document, indent=2) + "\n").encode()
    if per_image is not None:
        outputs[per_image] = result.csv_text().encode()
    if plot is not None:
        if metric == "pose":
            raise click.UsageError("--plot draws the CED of landmark errors; it has no meaning for --metric pose")
        # imported when the command runs, so that `--help` and start-up stay fast
        from dhm_data.evaluation.plots import ced_figure

        fig = ced_figure(result.reports, title=dataset_title(dataset))
        outputs[plot] = lambda tmp: fig.savefig(tmp, format="png")
    _write_all(outputs)
    lines = [result.text()] + [f"wrote {p}" for p in outputs]
    click.echo("\n".join(lines))
    for w in result.warnings:
        click.echo(f"WARNING: {w}", err=True)
    sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover
    main()

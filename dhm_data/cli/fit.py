"""``dhm-data fit-bfm``: fit a morphable model's pose, identity and expression
to 68 landmarks, for a raw dataset (into its build folder) or for any array."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from dhm_data.errors import FittingError
from dhm_data.fit.config import JAW_MODES, METHODS, FitConfig
from dhm_data.geometry.landmarks68 import landmark_array

#: flagged fits printed to the console before "... and N more"
_SHOW_FLAGGED = 30


def _config(options: dict) -> FitConfig:
    """The config of the given command options (``None`` = not given) over
    the defaults, checked by :meth:`FitConfig.from_mapping`."""
    try:
        return FitConfig.from_mapping({k: v for k, v in options.items() if v is not None}, origin="fit-bfm options")
    except FittingError as e:
        raise click.BadParameter(str(e)) from e


def _load_array(path: Path, what: str, dims: int) -> np.ndarray:
    """``(B, 68, dims)`` float64 from a ``.npy``, or the array ``what`` of an
    ``.npz``, in any of the landmark shapes ``dhm-eval`` accepts
    (:func:`dhm_data.geometry.landmarks68.landmark_array`)."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if what not in z.files:
                    raise click.ClickException(f"{path}: key {what!r} is missing (keys: {', '.join(z.files)})")
                a = z[what]
        else:
            a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise click.ClickException(f"{path}: cannot read as .npy/.npz ({e})") from e
    return landmark_array(a, f"{path}: {what}", dims=dims)


def _heights(image_height: str | None, B: int) -> np.ndarray:
    if image_height is None:
        raise click.UsageError(
            "--image-height is required with --landmarks: Pose_Para's ty depends on it (1-based vertical flip "
            "y = h + 1 - y of the 300W-LP convention); pass the height in pixels (e.g. 450 for 300W-LP / "
            "AFLW2000-3D images) or a .npy of B heights")
    try:
        return np.full(B, float(image_height))
    except ValueError:
        pass
    p = Path(image_height)
    h = np.load(p, allow_pickle=False).astype(np.float64).ravel() if p.is_file() else None
    if h is None or h.shape != (B,):
        raise click.BadParameter(f"{image_height}: expected a number or a .npy of {B} heights", param_hint="--image-height")
    return h


def _report_flagged(rows: list[dict], limit: float, echo) -> None:
    if not rows:
        return
    echo(f"{len(rows)} fits flagged (not converged, or residual NME > {limit:g}):")
    echo(f"  {'name':<40} {'NME':>8} {'px':>8} converged iterations points")
    for r in rows[:_SHOW_FLAGGED]:
        echo(f"  {r['name']:<40} {r['residual']:>8.4f} {r['residual_px']:>8.2f} {str(r['converged']):>9} "
             f"{r['iterations']:>10} {r['n_points']:>6}")
    if len(rows) > _SHOW_FLAGGED:
        echo(f"  ... and {len(rows) - _SHOW_FLAGGED} more (key 'flagged' of the output file)")


@click.command(context_settings={"show_default": True})
@click.argument("dataset", required=False, metavar="[DATASET]")
@click.option("--root", type=click.Path(path_type=Path), default=None, help="Raw dataset folder (DATASET mode).")
@click.option("--bfm", type=click.Path(path_type=Path), default=None,
              help="Morphable model file or folder (format detected), e.g. the 68-row BFM subset folder. "
                   "Required, except for trees written by `dhm-data synth`, which bring their own model.")
@click.option("--landmarks", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="(B, 68, 2) .npy (or .npz key 'landmarks') of 0-based pixel coordinates, NaN = missing; "
                   "(B, 2, 68), (B, 68, 3) and (B, 3, 68) are accepted too (z is not used).")
@click.option("--landmarks-3d", "landmarks_3d", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="3D landmark estimates: (B, 68, 3) .npy with --landmarks; an .npz with 'names' and "
                   "'landmarks_3d' in DATASET mode. z = depth in pixels, larger = closer.")
@click.option("--image-height", default=None, help="Image height in pixels, or a .npy of B heights (--landmarks mode).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="--landmarks mode: the .npz to write. DATASET mode: the build folder [default: out/DATASET].")
@click.option("--regularisation", type=float, default=None, help=FitConfig.option_help("regularisation"))
@click.option("--max-iterations", type=int, default=None, help=FitConfig.option_help("max_iterations"))
@click.option("--tolerance", type=float, default=None, help=FitConfig.option_help("tolerance"))
@click.option("--max-residual", type=float, default=None, help=FitConfig.option_help("max_residual"))
@click.option("--jaw", type=click.Choice(JAW_MODES), default=None,
              help=FitConfig.option_help("jaw") + " DATASET mode: the pipeline's [fit] jaw if it sets one (ls3dw: "
                   "fixed), else the mode of the kind of label the samples carry. The mode used is recorded in the "
                   "fit output (keys 'jaw', 'jaw_reason').")
@click.option("--method", type=click.Choice(METHODS), default=None, help=FitConfig.option_help("method"))
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, help="DATASET mode: worker processes, one shard each.")
@click.option("--backend", default="loky", help="DATASET mode: joblib backend.")
@click.option("--force", is_flag=True, help="--landmarks mode: refit even if OUT holds a fit of the same input.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def fit_bfm(dataset, root, bfm, landmarks, landmarks_3d, image_height, out, regularisation, max_iterations, tolerance,
            max_residual, jaw, method, jobs, backend, force, quiet):
    """Fit pose (Pose_Para), identity and expression coefficients to 68 landmarks.

    \b
    Two modes:
      dhm-data fit-bfm DATASET --root DIR --bfm MODEL [--landmarks-3d FILE] [--out BUILD]
          fit every sample of a raw dataset (pipeline DATASET, e.g. ls3dw) into
          BUILD/fits/, where `dhm-data build DATASET --out BUILD` picks them up;
          resumable (finished shards are skipped).
      dhm-data fit-bfm --landmarks L.npy --image-height H --bfm MODEL --out FITS.npz
          fit any (B, 68, 2) array of 0-based pixel landmarks; writes Pose_Para
          (B, 7), shape_para, exp_para, residuals and converged / flagged flags
          (format: dhm_data.fit.result_file). Reruns with the same input skip the work.
    """
    # imported when the command runs, so that `--help` and start-up stay fast
    from dhm_data.build.fit_reuse import fit_input_fingerprint, reusable_fit
    from dhm_data.fit import fit
    from dhm_data.fit.result_file import flagged_table, read_fits, write_fits
    from dhm_data.models.formats import load_model

    echo = lambda m: click.echo(m, err=True)  # noqa: E731
    if (dataset is None) == (landmarks is None):
        raise click.UsageError("give either DATASET (with --root) or --landmarks FILE.npy, not both / neither")
    if landmarks is not None:
        if root is not None:
            raise click.UsageError("--root belongs to DATASET mode; with --landmarks give --out FILE.npz")
        if out is None:
            raise click.UsageError("--out FILE.npz is required with --landmarks")
        if bfm is None:
            raise click.UsageError("--bfm MODEL is required with --landmarks")
        lm = _load_array(landmarks, "landmarks", 2)
        l3 = _load_array(landmarks_3d, "landmarks_3d", 3) if landmarks_3d else None
        if l3 is not None and len(l3) != len(lm):
            raise click.ClickException(f"{landmarks_3d}: {len(l3)} rows of 3D landmarks for {len(lm)} rows in {landmarks}")
        h = _heights(image_height, len(lm))
        config = _config({"regularisation": regularisation, "max_iterations": max_iterations, "tolerance": tolerance,
                          "max_residual": max_residual, "jaw": jaw, "method": method})
        jaw_reason = ("--jaw" if jaw is not None else
                      "default: labels taken as projections of fixed 3D landmarks (AFLW2000-3D pt3d_68, 300W-LP "
                      "pts_3d, LS3D-W); --jaw silhouette for contour-following labels (300W-LP pt2d / pts_2d)")
        model = load_model(bfm)
        fp = fit_input_fingerprint(lm, l3, h, config, model)
        old = None if force else reusable_fit(out, fp)
        if old is not None:
            click.echo(f"{out}: already holds the fit of this input ({len(old['names'])} faces); skipped (--force to refit)")
            return
        result = fit(lm, model, l3, config, image_height=h)
        write_fits(out, None, result, h, model_name=model.name, used_3d=l3 is not None,
                   extra={"input_fingerprint": fp}, jaw_reason=jaw_reason)
        fits = read_fits(out)
        n = len(result)
        click.echo(f"{out}: fitted {n} faces with {model.name}, jaw {config.jaw} ({jaw_reason}): "
                   f"{int(result.converged.sum())} converged, {int(result.flagged.sum())} flagged, "
                   f"median NME {np.nanmedian(result.residual):.4f}")
        _report_flagged(flagged_table(fits), config.max_residual, echo)
        return
    _fit_dataset(dataset, root, bfm, landmarks_3d, out, regularisation, max_iterations, tolerance, max_residual, jaw,
                 method, jobs, backend, quiet, echo)


def _fit_dataset(dataset, root, bfm, landmarks_3d, out, regularisation, max_iterations, tolerance, max_residual, jaw,
                 method, jobs, backend, quiet, echo):
    """DATASET mode: the build's fit stage alone (:func:`dhm_data.build.flow.run_fit`)."""
    from dhm_data.build.flow import BuildRequest, run_fit  # imported when the command runs (start-up)

    if root is None:
        raise click.UsageError("DATASET mode needs --root DIR (the raw dataset folder)")
    out = out or Path("out") / Path(dataset).stem
    overrides = {f"fit.{k}": v for k, v in (("regularisation", regularisation), ("max_iterations", max_iterations),
                                             ("tolerance", tolerance), ("max_residual", max_residual), ("jaw", jaw),
                                             ("method", method)) if v is not None}
    req = BuildRequest(dataset, root, out, bfm, jobs, backend, False, overrides, not quiet, landmarks_3d=landmarks_3d)
    s = run_fit(req, echo=echo)
    click.echo(f"fitted {s['fitted']} samples of {dataset} into {Path(out) / 'fits'}: {s['converged']} converged, "
               f"{s['flagged']} flagged (list: {s['flagged_list']}), {s['unreadable']} unreadable")
    flagged = [json.loads(line) for line in Path(s["flagged_list"]).read_text().splitlines()]
    limit = float(s["settings"]["fit"].get("max_residual", 0.05))
    _report_flagged(flagged, limit, echo)

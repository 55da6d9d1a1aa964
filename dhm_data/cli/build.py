"""``dhm-data build``, ``status`` and ``verify``."""

from __future__ import annotations

from pathlib import Path

import click

from dhm_data.build.layout import BuildLayout
from dhm_data.shards.schema import DEFAULT_DHM_STORAGE, DHM_STORAGE_CHOICES



@click.command(context_settings={"show_default": True})
@click.argument("pipeline", metavar="NAME")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Raw dataset folder (or its parent).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Build folder [default: out/NAME].")
@click.option("--bfm", type=click.Path(path_type=Path), default=None,
              help="Morphable model file or folder (format detected). Required for real data; synthetic trees bring "
                   "their own. Dataset 3DMM labels (300W-LP, AFLW2000-3D) need a model of their family (BFM 2009).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, help="Worker processes (joblib), shards run in parallel.")
@click.option("--backend", default="loky", type=click.Choice(["loky", "multiprocessing", "dask", "ray"]),
              help="joblib backend: loky = local processes; dask / ray = a cluster (build folder on a shared filesystem).")
@click.option("--scheduler", default=None,
              help="Cluster address for --backend dask (tcp://host:8786) or ray; without it a local cluster of --jobs workers.")
@click.option("--strict", is_flag=True,
              help="Fail on any rejected sample or manifest count mismatch; reject images the decoder reports as corrupt.")
@click.option("--crop-size", type=int, default=None, help="Override [crop] size (pixels).")
@click.option("--margin", type=float, default=None, help="Override [crop] margin (side = (1 + margin) * box side).")
@click.option("--sigma", type=float, default=None, help="Override [dhm] sigma (crop pixels).")
@click.option("--shard-size", type=int, default=None, help="Override [shards] size (samples per shard).")
@click.option("--dhm-storage", type=click.Choice(DHM_STORAGE_CHOICES), default=None,
              help=f"Override [shards] dhm_storage: {DEFAULT_DHM_STORAGE} (compressed, default) or the others the "
                   "shard schema allows (u8q-raw: uncompressed, 2x disk, faster loads).")
@click.option("--landmarks-3d", "landmarks_3d", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="3D landmark estimates for the fit stage (.npz: names, landmarks_3d (N, 68, 3)); "
                   "default: those of an earlier `dhm-data fit-bfm` into the same --out.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the first N samples (a quick trial; skips the count check).")
@click.option("--force", is_flag=True, help="Replace a build of another pipeline in --out (otherwise refused).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build(pipeline, root, out, bfm, jobs, backend, scheduler, strict, crop_size, margin, sigma, shard_size, dhm_storage,
          landmarks_3d, limit, force, quiet):
    """Build HDF5 shards for the pipeline NAME (pipelines/NAME.toml, or a .toml path).

    Resumable: rerun the same command after a crash or Ctrl-C and only the
    unfinished shards are redone; a changed input or parameter redoes the
    shards it affects (content, not modification times, decides: a copied
    folder is still done).  Shipped pipelines: 300wlp, aflw2000,
    aflw2000-reannotated, ls3dw.
    """
    # imported when the command runs, so that `--help` and start-up stay fast
    from dhm_data.build.flow import BuildRequest, run_build

    overrides = {"crop.size": crop_size, "crop.margin": margin, "dhm.sigma": sigma, "shards.size": shard_size,
                 "shards.dhm_storage": dhm_storage}
    out = out or Path("out") / Path(pipeline).stem
    req = BuildRequest(pipeline, root, out, bfm, jobs, backend, strict, overrides, not quiet, limit,
                       landmarks_3d=landmarks_3d, scheduler=scheduler, force=force)
    summary = run_build(req, echo=lambda m: click.echo(m, err=True))
    written = ", ".join(f"{k}: {v}" for k, v in summary["written"].items())
    click.echo(f"built {summary['dataset']} into {out}: {written}; rejected {summary['rejected']}")
    if summary["rejected"]:
        click.echo(f"  reasons: {summary['rejection_reasons']}  (list: {BuildLayout(out).rejections})")
    if summary["warnings"]:
        click.echo(f"  {len(summary['warnings'])} warnings on kept samples (key 'warnings' of {BuildLayout(out).summary})")


@click.command()
@click.argument("out", type=click.Path(path_type=Path, exists=True, file_okay=False))
def status(out):
    """Show which units of the build in OUT are done and which are left."""
    # imported when the command runs, so that `--help` and start-up stay fast
    from dhm_data.build.state import build_status

    st = build_status(out)
    click.echo(f"build folder: {st.root}")
    for split, n in st.splits.items():
        click.echo(f"  split {split}: {n} samples")
    for stage, s in st.stages.items():
        n = len(s["done"]) + len(s["left"])
        line = f"  stage {stage}: {len(s['done'])} of {n} units done"
        if s["left"]:
            more = f" (+{len(s['left']) - 3} more)" if len(s["left"]) > 3 else ""
            line += f"; left: {', '.join(s['left'][:3])}{more}, {s['samples_left']} samples"
        click.echo(line)
    if st.finished:
        click.echo(f"  finished: written {st.summary['written']}, rejected {st.summary['rejected']}")
    else:
        click.echo("  not finished: rerun the same `dhm-data build` command to resume")


@click.command()
@click.argument("out", type=click.Path(path_type=Path, exists=True, file_okay=False))
def verify(out):
    """Check every shard of OUT: sample counts against build.json and checksums."""
    # imported when the command runs, so that `--help` and start-up stay fast
    from dhm_data.build.state import verify_build

    report = verify_build(out)
    if not report.ok:
        raise click.ClickException("verification failed:\n  " + "\n  ".join(report.problems))
    click.echo(f"ok: {report.shards} shards, {sum(report.samples.values())} samples, checksums match")

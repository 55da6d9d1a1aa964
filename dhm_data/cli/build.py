"""``dhm-data build``, ``status`` and ``verify``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dhm_data.build.layout import BuildLayout
from dhm_data.errors import DatasetError, PipelineError
from dhm_data.shards.schema import DHM_STORAGE_CHOICES


def _fail(e: Exception):
    raise click.ClickException(str(e)) from e


@click.command(context_settings={"show_default": True})
@click.argument("pipeline", metavar="NAME")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Raw dataset folder (or its parent).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Build folder [default: out/NAME].")
@click.option("--bfm", type=click.Path(path_type=Path), default=None,
              help="Morphable model file or folder (format detected). Required for real data; synthetic trees bring their own.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, help="Worker processes (joblib), shards run in parallel.")
@click.option("--backend", default="loky", type=click.Choice(["loky", "multiprocessing", "dask", "ray"]),
              help="joblib backend: loky = local processes; dask / ray = a cluster (build folder on a shared filesystem).")
@click.option("--scheduler", default=None,
              help="Cluster address for --backend dask (tcp://host:8786) or ray; without it a local cluster of --jobs workers.")
@click.option("--strict", is_flag=True, help="Fail on any rejected sample or manifest count mismatch.")
@click.option("--crop-size", type=int, default=None, help="Override [crop] size (pixels).")
@click.option("--margin", type=float, default=None, help="Override [crop] margin (side = (1 + margin) * box side).")
@click.option("--sigma", type=float, default=None, help="Override [dhm] sigma (crop pixels).")
@click.option("--shard-size", type=int, default=None, help="Override [shards] size (samples per shard).")
@click.option("--dhm-storage", type=click.Choice(DHM_STORAGE_CHOICES), default=None,
              help="Override [shards] dhm_storage: u8q-lz4 (compressed, default) or u8q-raw (2x disk, faster loads).")
@click.option("--landmarks-3d", "landmarks_3d", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="3D landmark estimates for the fit stage (.npz: names, landmarks_3d (N, 68, 3)); "
                   "default: those of an earlier `dhm-data fit-bfm` into the same --out.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the first N samples (a quick trial; skips the count check).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build(pipeline, root, out, bfm, jobs, backend, scheduler, strict, crop_size, margin, sigma, shard_size, dhm_storage,
          landmarks_3d, limit, quiet):
    """Build HDF5 shards for the pipeline NAME (pipelines/NAME.toml, or a .toml path).

    Resumable: rerun the same command after a crash or Ctrl-C and only the
    unfinished shards are redone; a changed input or parameter redoes the
    shards it affects.  Shipped pipelines: 300wlp, aflw2000,
    aflw2000-reannotated, ls3dw.
    """
    from dhm_data.build.flow import BuildRequest, run_build
    from dhm_data.errors import BackendError, BuildError, BuildLockedError, ModelFileError, UnitError

    overrides = {"crop.size": crop_size, "crop.margin": margin, "dhm.sigma": sigma, "shards.size": shard_size,
                 "shards.dhm_storage": dhm_storage}
    out = out or Path("out") / Path(pipeline).stem
    req = BuildRequest(pipeline, root, out, bfm, jobs, backend, strict, overrides, not quiet, limit,
                       landmarks_3d=landmarks_3d, scheduler=scheduler)
    try:
        summary = run_build(req, echo=lambda m: click.echo(m, err=True))
    except (BuildError, DatasetError, PipelineError, ModelFileError, BuildLockedError, UnitError, BackendError) as e:
        _fail(e)
    written = ", ".join(f"{k}: {v}" for k, v in summary["written"].items())
    click.echo(f"built {summary['dataset']} into {out}: {written}; rejected {summary['rejected']}")
    if summary["rejected"]:
        click.echo(f"  reasons: {summary['rejection_reasons']}  (list: {BuildLayout(out).rejections})")


@click.command()
@click.argument("out", type=click.Path(path_type=Path, exists=True, file_okay=False))
def status(out):
    """Show which units of the build in OUT are done and which are left."""
    from dhm_data.build.runner import plan_status

    layout = BuildLayout(out)
    if not layout.split_file.exists():
        raise click.ClickException(f"{out}: not a build folder (no {layout.split_file.name}); run `dhm-data build` first")
    splits = json.loads(layout.split_file.read_text())
    click.echo(f"build folder: {layout.root}")
    for split, names in splits.items():
        click.echo(f"  split {split}: {len(names)} samples")
    for stage, st in plan_status(layout).items():
        n = len(st["done"]) + len(st["left"])
        line = f"  stage {stage}: {len(st['done'])} of {n} units done"
        if st["left"]:
            more = f" (+{len(st['left']) - 3} more)" if len(st["left"]) > 3 else ""
            line += f"; left: {', '.join(st['left'][:3])}{more}, {st['samples_left']} samples"
        click.echo(line)
    if layout.summary.exists():
        s = json.loads(layout.summary.read_text())
        click.echo(f"  finished: written {s['written']}, rejected {s['rejected']}")
    else:
        click.echo("  not finished: rerun the same `dhm-data build` command to resume")


@click.command()
@click.argument("out", type=click.Path(path_type=Path, exists=True, file_okay=False))
def verify(out):
    """Check every shard of OUT: sample counts against build.json and checksums."""
    from dhm_data.build.runner import plan_status
    from dhm_data.errors import ShardError
    from dhm_data.shards import verify_shard

    layout = BuildLayout(out)
    if not layout.summary.exists():
        raise click.ClickException(f"{out}: no build.json; the build did not finish (rerun it) or this is not a build folder")

    summary = json.loads(layout.summary.read_text())
    problems, counts = [], {}
    for stage, st in plan_status(layout).items():
        if st["left"]:
            problems.append(f"stage {stage}: {len(st['left'])} units not done or changed since their record "
                            f"({', '.join(st['left'][:3])}); rerun the build")
    for name in summary["shards"]:
        split, shard = name.split("/")
        path = layout.split_dir(split) / f"{shard}.h5"
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        try:
            report = verify_shard(path)
        except ShardError as e:
            problems.append(str(e))
            continue
        counts[split] = counts.get(split, 0) + int(report["n_samples"])
    for split, n in summary["written"].items():
        if counts.get(split, 0) != n and not any(split in p for p in problems):
            problems.append(f"split {split}: shards hold {counts.get(split, 0)} samples, build.json says {n}")
    if problems:
        raise click.ClickException("verification failed:\n  " + "\n  ".join(problems))
    click.echo(f"ok: {len(summary['shards'])} shards, {sum(counts.values())} samples, checksums match")

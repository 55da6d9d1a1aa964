"""``dhm-data synth``: write a synthetic dataset in a real dataset's on-disk format."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(context_settings={"show_default": True})
@click.argument("dataset", type=click.Choice(["300wlp", "aflw2000", "ls3dw"]))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to create (must be empty or new).")
@click.option("-n", "n", type=int, default=100,
              help="Samples: non-flipped samples for 300wlp (the _Flip copies double it), images for the others.")
@click.option("--seed", type=int, default=0, help="Seed: same seed, same bytes.")
@click.option("--bfm", type=click.Path(path_type=Path), default=None,
              help="Draw faces from this morphable model (needs triangles) instead of the packaged SYNTHETIC model.")
@click.option("--names", "names_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="300wlp only: write exactly the samples this text file names, one SUBSET/name a line "
                   "(e.g. the real release's name list, CRLF line ends and .jpg suffixes accepted); -n is then ignored.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1,
              help="300wlp: processes drawing photos in parallel (the files do not depend on it).")
@click.option("--force", is_flag=True, help="Replace a non-empty --out folder.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def synth(dataset, out, n, seed, bfm, names_file, jobs, force, quiet):
    """Write a synthetic DATASET (300wlp, aflw2000 or ls3dw) into --out, in the
    exact on-disk format of the real one: folder layout, file names, .mat keys,
    shapes and dtypes, Torch7 .t7 files, JPEG images showing a face-like
    picture whose features sit where the labels say.

    Faces come from the packaged dhm-data SYNTHETIC face model (not the Basel
    Face Model).  The tree records what made it in SYNTHETIC.json, so `dhm-data
    build` and `fit-bfm` use the same model when no --bfm is given.  Written
    into a temporary folder and renamed into place: an interrupted run leaves
    nothing behind.
    """
    # imported when the command runs, so that `--help` and start-up stay fast
    from dhm_data.synth import DATASETS, synthesize

    model = None
    if bfm is not None:
        # imported when the command runs, so that `--help` and start-up stay fast
        from dhm_data.models.formats import load_model

        model = load_model(bfm)
    names = None
    if names_file is not None:
        # imported when the command runs, so that `--help` and start-up stay fast
        from dhm_data.synth.w300lp import read_name_list

        if dataset != "300wlp":
            raise click.UsageError(f"--names is only supported for 300wlp, not {dataset}")
        names = read_name_list(names_file)
        n = len(names)
    bar = None
    if not quiet:
        # imported when the command runs, so that `--help` and start-up stay fast
        from tqdm import tqdm

        bar = tqdm(total=n, unit="sample", desc=f"synth {dataset}", leave=False, delay=0.5)

    def progress(done, total):
        if bar is not None:
            bar.update(done - bar.n)

    try:
        synthesize(dataset, out, n, seed=seed, model=model, force=force, progress=progress, names=names, jobs=jobs)
    finally:
        if bar is not None:
            bar.close()
    folder = out / DATASETS[dataset][1]
    click.echo(f"wrote synthetic {dataset} ({n} samples, seed {seed}) to {folder}; marker {out / 'SYNTHETIC.json'}")

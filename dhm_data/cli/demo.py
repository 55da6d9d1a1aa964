"""``dhm-data demo``: the whole pipeline on built-in synthetic data."""

from __future__ import annotations

import shutil
from pathlib import Path

import click


@click.command(context_settings={"show_default": True})
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo"), help="Folder for everything the demo writes.")
@click.option("-n", type=int, default=48, help="Samples per synthetic dataset (300W-LP: plus as many mirrors).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=2, help="Worker processes for the builds.")
@click.option("--seed", type=int, default=0, help="Seed of the synthetic data.")
@click.option("--fresh", is_flag=True, help="Delete OUT first (otherwise a rerun resumes and skips finished work).")
def demo(out, n, jobs, seed, fresh):
    """Generate small synthetic 300W-LP, AFLW2000-3D and LS3D-W trees (in the
    exact on-disk formats of the real ones), build all three (LS3D-W through
    the fit stage), draw a sample, score noisy predictions with dhm-eval's
    protocol, and print where everything is."""
    # imported when the command runs, so that `--help` and start-up stay fast
    from dhm_data.build.flow import BuildRequest, run_build
    from dhm_data.build.layout import BuildLayout
    from dhm_data.synth import synthesize

    if fresh and out.exists():
        shutil.rmtree(out)
    raw, builds = out / "raw", out / "build"
    lines = []
    for dataset in ("300wlp", "aflw2000", "ls3dw"):
        tree = raw / dataset
        if not (tree / "SYNTHETIC.json").exists():
            click.echo(f"writing synthetic {dataset} ({n} samples) to {tree}")
            synthesize(dataset, tree, n, seed=seed)
        click.echo(f"building {dataset} -> {builds / dataset}")
        l3 = next(tree.rglob("synthetic_landmarks_3d.npz"), None) if dataset == "ls3dw" else None
        s = run_build(BuildRequest(dataset, tree, builds / dataset, None, jobs=jobs, landmarks_3d=l3),
                      echo=lambda m: click.echo(f"  {m}", err=True))
        extra = f", fitted {s['fit']['fitted']} (converged {s['fit']['converged']})" if s.get("fit") else ""
        lines.append(f"  {dataset:9s} raw {tree}\n            shards {builds / dataset}: {s['written']}, rejected {s['rejected']}{extra}")

    # imported when the command runs, so that `--help` and start-up stay fast
    from dhm_data.load import ShardDataset
    from dhm_data.viz.sample import sample_picture, save_png

    picture = out / "sample.png"
    ds = ShardDataset(BuildLayout(builds / "300wlp").shards("train")[0].parent)
    s0 = ds[0]
    save_png(picture, sample_picture(s0["image"], s0["landmarks_2d"], s0["dhm"]))
    report = _evaluate_demo(out, builds / "aflw2000")

    click.echo("\ndemo finished:")
    click.echo("\n".join(lines))
    click.echo(f"  sample picture (crop + landmarks | DHM): {picture}")
    click.echo(report)
    click.echo("  next: dhm-data status " + str(builds / "300wlp") + " ; dhm-data show " + str(builds / "300wlp") + " -i 3 -o s.png")


def _evaluate_demo(out: Path, build_dir: Path) -> str:
    """Noisy copies of the AFLW2000-3D ground truth scored with the published
    protocol, as a user would score a model's predictions."""
    # imported when the command runs, so that `--help` and start-up stay fast
    import numpy as np

    from dhm_data.evaluation.ground_truth import load_ground_truth
    from dhm_data.evaluation.metrics import evaluate

    gt = load_ground_truth("aflw2000", build=build_dir)
    rng = np.random.default_rng(0)
    pred = gt.landmarks + rng.normal(0, 2.0, gt.landmarks.shape)
    pred_file = out / "predictions.npy"
    np.save(pred_file, pred)
    rep = evaluate(pred, gt.landmarks, gt.yaw_deg, names=gt.names, label="GT + 2 px noise")
    what, value = rep.headline
    return (f"  evaluation of {pred_file} (GT + 2 px noise) on synthetic AFLW2000-3D: NME {what} {100 * value:.2f}%, "
            f"overall mean {100 * rep.overall_mean:.2f}%\n"
            f"  reproduce: dhm-eval {pred_file} --dataset aflw2000 --build {build_dir} --plot {out / 'ced.png'}")

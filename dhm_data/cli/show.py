"""``dhm-data show``: draw one built sample, or export its fitted mesh."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(context_settings={"show_default": True})
@click.argument("out", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--index", "-i", type=int, default=0, help="Sample index within the split.")
@click.option("--split", default=None, help="Split folder (train, val, test, all) [default: the first one].")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("sample.png"), help="PNG to write.")
@click.option("--mesh", type=click.Path(path_type=Path), default=None,
              help="Also export the sample's 3D face as .obj/.ply (needs --bfm with triangles).")
@click.option("--bfm", type=click.Path(path_type=Path), default=None, help="Full model for --mesh.")
def show(out, index, split, output, mesh, bfm):
    """Draw sample INDEX of the build OUT: the crop with its landmarks, the DHM beside it.

    With --mesh, the model must be one the sample's parameters belong to
    (the labels' model family, or the model the build fitted with): another
    is refused."""
    # imported when the command runs, so that `--help` and start-up stay fast
    from dhm_data.build.layout import BuildLayout
    from dhm_data.load import ShardDataset
    from dhm_data.viz.sample import sample_picture, save_png

    layout = BuildLayout(out)
    model = _mesh_model(layout, bfm) if mesh is not None else None
    shards = layout.shards(split)
    if not shards:
        raise click.ClickException(f"{out}: no shards{' in split ' + split if split else ''}; run `dhm-data build` first")
    split_dir = shards[0].parent
    ds = ShardDataset(split_dir)
    if not 0 <= index < len(ds):
        raise click.ClickException(f"--index {index} is out of range: {split_dir} holds {len(ds)} samples")
    s = ds[index]
    save_png(output, sample_picture(s["image"], s["landmarks_2d"], s["dhm"]))
    click.echo(f"{output}: {s['name']} ({split_dir.name} #{index}, yaw {float(s['yaw']):.1f} deg)")
    if mesh is not None:
        # imported when the command runs, so that `--help` and start-up stay fast
        from dhm_data.viz.mesh import export_mesh

        export_mesh(model, s["shape_para"], s["exp_para"], mesh)
        click.echo(f"{mesh}: mesh of {s['name']}")


def _mesh_model(layout, bfm):
    """The --bfm model, refused unless the build's parameters belong to it."""
    # imported when the command runs, so that `--help` and start-up stay fast
    import json

    # imported when the command runs, so that `--help` and start-up stay fast
    from dhm_data.build.model_check import check_mesh_model
    from dhm_data.models.formats import load_model

    if bfm is None:
        raise click.ClickException("--mesh needs --bfm: the full model with triangles")
    model = load_model(bfm)
    if layout.summary.exists():
        check_mesh_model(model, json.loads(layout.summary.read_text()))
    return model

"""The ``dhm-data`` command: a thin click shell over library calls.

Each sub-command lives in its own module of this package and is imported only
when it is run, so ``dhm-data --help`` stays fast and one broken command does
not take the others down.
"""

from __future__ import annotations

import importlib

import click

#: command name -> (module in dhm_data.cli, attribute, one-line help)
COMMANDS = {
    "demo": ("demo", "demo", "Generate small synthetic datasets, build them and draw a sample."),
    "synth": ("synth", "synth", "Write a synthetic dataset in the exact on-disk format of a real one."),
    "build": ("build", "build", "Build HDF5 shards of crops, DHMs and labels from a raw dataset."),
    "fit-bfm": ("fit", "fit_bfm", "Fit morphable-model identity, expression and pose to landmarks."),
    "status": ("build", "status", "Show which units of a build are done and which are left."),
    "verify": ("build", "verify", "Check a build's shard counts and checksums."),
    "show": ("show", "show", "Draw one built sample (crop, landmarks, DHM) to a picture or mesh."),
}


class LazyGroup(click.Group):
    def invoke(self, ctx):
        """Every command's errors, caught once: a :class:`DhmDataError` (a
        problem of the input, of a file, or a run that cannot go on) exits
        non-zero with its message; anything else is a bug and keeps its
        traceback."""
        # imported when the command runs, so that `--help` and start-up stay fast
        from dhm_data.errors import DhmDataError

        try:
            return super().invoke(ctx)
        except DhmDataError as e:
            raise click.ClickException(str(e)) from e

    def list_commands(self, ctx):
        return sorted(n for n in COMMANDS if self._load(n, quiet=True) is not None)

    def get_command(self, ctx, name):
        return self._load(name)

    def _load(self, name, quiet=False):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        try:
            mod = importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as e:
            if quiet and e.name == f"{__name__}.{module}":
                return None
            raise
        return getattr(mod, attr, None)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dhm-data")
def main():
    """Prepare 300W-LP, AFLW2000-3D and LS3D-W for large-pose 3D face alignment.

    Typical use:

    \b
      dhm-data demo                              # everything on built-in synthetic data
      dhm-data build 300wlp --root ~/data/300W_LP --bfm ~/models/BFM --out out/300wlp
      dhm-data fit-bfm ls3dw --root ~/data/LS3D-W --bfm ~/models/BFM --out out/ls3dw
      dhm-data status out/300wlp
      dhm-eval predictions.npy --dataset aflw2000 --root ~/data/AFLW2000
    """
